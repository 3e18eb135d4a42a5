"""Shared helpers for the holdfast Python suite (run by ctest label `python`:
/usr/bin/python3 -m pytest with PYTHONPATH at the build tree's python/ directory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

# Scale for soak-style tests: full under HOLDFAST_SOAK, reduced by default.
SOAK = bool(os.environ.get("HOLDFAST_SOAK"))

# Generous bound that only catches hangs; never a performance assertion.
HANG_TIMEOUT = 60.0


def child_env() -> dict[str, str]:
    """The environment for child Python processes: same PYTHONPATH, so they import the same build."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Starts /usr/bin/python3 (this interpreter) running `code` with `args`."""
    return subprocess.Popen([sys.executable, "-c", code, *args], env=child_env(), **kwargs)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = HANG_TIMEOUT) -> None:
    """Polls real state until `predicate` holds; fails only if it never does (a hang)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def lock_waiters(pid: int) -> bool:
    """True if /proc/locks shows process `pid` blocked waiting for a lock (a '->' line)."""
    with open("/proc/locks") as f:
        for line in f:
            if "->" in line and line.split("->", 1)[1].split()[3] == str(pid):
                return True
    return False


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
