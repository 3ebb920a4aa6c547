"""What a test needs beyond the package: skipped outside CI when missing, a failure in CI (`CI` set)."""

import importlib.util
import os
import socket
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


def free_port() -> int:
    """A local TCP port nobody listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
