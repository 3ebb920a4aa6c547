"""Shared fixtures: real MNIST prepared by TFDS from the original archives in ../shared/data."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tfds_dir() -> Path:
    """A TFDS data dir shared by the whole test session (kept in .cache/ between runs)."""
    path = Path(os.environ.get("TEST_TFDS_DATA_DIR") or os.environ["TFDS_DATA_DIR"])  # root conftest.py
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mnist_archives() -> Path:
    env = os.environ.get("MNIST_ARCHIVES_DIR")  # set by the root conftest.py when the archives exist
    path = Path(env) if env else None
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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright, one per test session (worker)."""
    from needs import CHROMIUM, need_chromium

    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()
