"""scripts/train.py for the multi-process tests, with one deliberate fault available.

    python tests/multiprocess_train.py [--wrong-slice] <train.py flags>

`--wrong-slice` makes every process feed process 0's rows of each global batch instead of its own:
the mistake the tests must catch (the same batch twice, half of it never seen)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--wrong-slice" in argv:
        argv.remove("--wrong-slice")
        import helpers.training

        def process_0_rows(batch_size, mesh):
            return 0, batch_size // mesh.devices.size * len(helpers.training.local_sharding(mesh).mesh.devices.flat)

        helpers.training.process_rows = process_0_rows
    import train

    sys.exit(train.main(argv))
