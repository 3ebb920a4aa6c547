"""What a test needs beyond the package: skipped outside CI when missing, a failure in CI (`CI` set)."""

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's package, driven by Playwright


def need(condition: bool, why: str) -> None:
    """Skip (or, in CI, fail) saying `why` unless `condition` holds."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def need_chromium() -> None:
    need(Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    need(has_module("playwright"), "playwright is not installed: pip install -e '.[docs]'")
