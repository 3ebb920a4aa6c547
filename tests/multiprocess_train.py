"""scripts/train.py for the multi-process tests, with one deliberate fault available.

    python tests/multiprocess_train.py [--wrong-order | --slow-finish SECONDS] <train.py flags>

`--wrong-order` makes each process shuffle the training set with a key of its own, so that the devices of
one global batch take their rows from different permutations: the mistake the tests must catch.
`--slow-finish SECONDS` makes process 0's sampling and scoring after training take that much longer, as a
long draw of samples does: the other processes must wait for it."""

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
    if "--slow-finish" in argv:
        i = argv.index("--slow-finish")
        seconds = float(argv.pop(i + 1))
        argv.pop(i)
        import time

        import helpers.runs

        def slow_finish(*args, _finish=helpers.runs.finish_run, **kwargs):
            time.sleep(seconds)
            return _finish(*args, **kwargs)

        helpers.runs.finish_run = slow_finish
    import train

    sys.exit(train.main(argv))
