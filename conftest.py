"""Session-wide settings for every test, the notebooks (nbmake) included.

Set at import, before any kernel or subprocess starts, so that all of them inherit it:
- TUTORIAL_PRESET=tiny for the tests' own notebook helpers; the notebooks themselves (nbmake) run at the
  `paper` preset as a quick check (MNIST_DIFFUSION_QUICK=1, tests/paper_path.py): the preset a learner
  with a GPU gets, with a few steps and a few images;
- TUTORIAL_RUNS_DIR: the notebooks' runs go to a fresh temporary folder, shared by pytest-xdist
  workers (so notebook 05 reuses the run notebook 04 trained), never to runs/;
- TFDS_DATA_DIR: the prepared datasets under .cache/ (kept between local runs);
- JAX_COMPILATION_CACHE_DIR: JAX's persistent compilation cache under .cache/jax, so the many
  processes of a run (scripts, notebook kernels) compile each program once;
- the original MNIST / Fashion-MNIST archives from ../shared/data (or $MNIST_ARCHIVES_DIR,
  $FASHION_MNIST_ARCHIVES_DIR) are copied to TFDS's manual directory, as a user without internet
  would do, so the notebooks prepare the datasets offline.
"""

import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
ARCHIVES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def shared_archives(name: str = "mnist") -> Path | None:
    """The folder with the four original archives: $<NAME>_ARCHIVES_DIR or ../shared/data/<name>."""
    env = os.environ.get(f"{name.upper()}_ARCHIVES_DIR")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / name]:
        if all((c / f).is_file() for f in ARCHIVES):
            return c
    return None


os.environ.setdefault("TUTORIAL_PRESET", "tiny")
os.environ.setdefault("TFDS_DATA_DIR", str(REPO / ".cache" / "tfds"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # small programs too
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("TUTORIAL_RUNS_DIR", str(Path(tempfile.gettempdir()) / "mnist-diffusion-tests" / _run_id))

for _name in ("mnist", "fashion_mnist"):
    _src = shared_archives(_name)
    if _src is not None:
        os.environ.setdefault(f"{_name.upper()}_ARCHIVES_DIR", str(_src))
        _dst = Path(os.environ["TFDS_DATA_DIR"]) / "downloads" / "manual" / _name
        if not all((_dst / f).is_file() for f in ARCHIVES):
            _dst.mkdir(parents=True, exist_ok=True)
            for f in ARCHIVES:
                shutil.copyfile(_src / f, _dst / f"{f}.part")
                (_dst / f"{f}.part").replace(_dst / f)


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller (or a plain run) cleans up
        shutil.rmtree(os.environ["TUTORIAL_RUNS_DIR"], ignore_errors=True)


def pytest_runtest_setup(item):
    """A notebook (nbmake) runs at the quick `paper` preset: its kernel inherits these variables."""
    if item.path.suffix == ".ipynb":
        from tests.paper_path import PAPER_QUICK

        item.saved_environ = {k: os.environ.get(k) for k in PAPER_QUICK}
        os.environ.update(PAPER_QUICK)


def pytest_runtest_teardown(item):
    for k, v in getattr(item, "saved_environ", {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
