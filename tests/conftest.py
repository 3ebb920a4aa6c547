"""Shared fixtures: real MNIST prepared by TFDS from the original archives in ../shared/data."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_archives(name: str = "mnist") -> Path | None:
    """The folder with the four original archives: $MNIST_ARCHIVES_DIR or ../shared/data/<name>."""
    env = os.environ.get(f"{name.upper()}_ARCHIVES_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / name)
    for c in candidates:
        if all((c / f).is_file() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
            return c
    return None


@pytest.fixture(scope="session")
def tfds_dir() -> Path:
    """A TFDS data dir shared by the whole test session (kept in .cache/ between runs)."""
    path = Path(os.environ.get("TEST_TFDS_DATA_DIR", REPO / ".cache" / "tfds"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mnist_archives() -> Path:
    path = shared_archives("mnist")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the MNIST archives in ../shared/data/mnist (or $MNIST_ARCHIVES_DIR).")
        pytest.skip("MNIST archives not found (set MNIST_ARCHIVES_DIR)")
    return path


@pytest.fixture(scope="session")
def mnist_test(tfds_dir, mnist_archives):
    """The real MNIST test split (10,000 images) through TFDS's own builder, prepared offline."""
    from helpers.data import load_split

    return load_split("mnist", "test", data_dir=tfds_dir, manual_dir=mnist_archives)


@pytest.fixture(scope="session", autouse=True)
def _shared_caches(tfds_dir):
    """One classifier cache and one TFDS dir for the whole session and its subprocesses."""
    os.environ.setdefault("MNIST_DIFFUSION_CACHE", str(REPO / ".cache" / "metrics"))
    os.environ.setdefault("TFDS_DATA_DIR", str(tfds_dir))
    archives = shared_archives("mnist")
    if archives is not None:
        os.environ.setdefault("MNIST_ARCHIVES_DIR", str(archives))
    yield
