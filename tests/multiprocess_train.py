"""scripts/train.py for the multi-process tests, with one deliberate fault available.

    python tests/multiprocess_train.py [--wrong-order] <train.py flags>

`--wrong-order` makes each process shuffle the training set with a key of its own, so that the devices of
one global batch take their rows from different permutations: the mistake the tests must catch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--wrong-order" in argv:
        argv.remove("--wrong-order")
        import jax

        import helpers.training

        def own_order(key, epoch, num_examples, batch_size, _order=helpers.training.epoch_order):
            return _order(jax.random.fold_in(key, jax.process_index()), epoch, num_examples, batch_size)

        helpers.training.epoch_order = own_order
    import train

    sys.exit(train.main(argv))
