"""holdfast.write(fence=TOKEN): the fenced durable write of `holdfast write --fence` (issue 14's
fencing) through the C API's HOLDFAST_C_1.1 node. A write whose token is lower than the highest
the path has accepted raises holdfast.Fenced (exit code 79) and leaves the target untouched;
Python and the command serialise on the same per-path record."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import holdfast
from conftest import HANG_TIMEOUT, run_python


@pytest.fixture
def state(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory for the fence records, inherited by children and the command."""
    d = tmp / "state"
    monkeypatch.setenv("HOLDFAST_STATE_DIR", str(d))
    return d


def cli(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.environ["HOLDFAST_CLI"], *args], input=data, capture_output=True,
                          timeout=HANG_TIMEOUT, check=False)


# A lock holder that learns its token, loses its grant (released here: it could as well have been
# paused past a lease), then waits on stdin (paused) before writing with its old token.
EX_HOLDER = r"""
import sys, holdfast
lock = holdfast.FileLock(sys.argv[1])
with lock:
    token = lock.token
print(token, flush=True)
sys.stdin.readline()  # paused until the parent says go
try:
    holdfast.write(sys.argv[2], b"stale", fence=token)
    print("written", flush=True)
except holdfast.Fenced as e:
    print("fenced", e.exit_code, e.token, e.path, "|", e, flush=True)
"""


def test_paused_ex_holder_is_refused_after_a_newer_holder_wrote(tmp: Path, state: Path) -> None:
    lock_path = str(tmp / "job.lock")
    target = tmp / "result"
    ex = run_python(EX_HOLDER, lock_path, str(target), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert ex.stdout is not None and ex.stdin is not None
        old_token = int(ex.stdout.readline())
        lock = holdfast.FileLock(lock_path)
        with lock:
            new_token = lock.token
            assert new_token > old_token
            holdfast.write(target, b"fresh", fence=new_token)
        ex.stdin.write("go\n")
        ex.stdin.flush()
        out, _ = ex.communicate(timeout=HANG_TIMEOUT)
    finally:
        if ex.poll() is None:
            ex.kill()
            ex.wait()
    words = out.split()
    assert words[:4] == ["fenced", "79", str(old_token), str(target)], out
    assert f"fencing token {old_token} is lower than {new_token}" in out, out
    assert target.read_bytes() == b"fresh"
    assert holdfast.accepted_fence(target) == new_token


def test_refusal_is_a_dedicated_error_naming_path_and_tokens(tmp: Path, state: Path) -> None:
    target = tmp / "data"
    holdfast.write(target, "five", fence=5)
    with pytest.raises(holdfast.Fenced) as refused:
        holdfast.write(target, "three", fence=3)
    e = refused.value
    assert isinstance(e, holdfast.Error)
    assert e.exit_code == 79
    assert e.token == 3
    assert e.path == str(target)
    assert str(target) in str(e) and "fencing token 3 is lower than 5" in str(e)
    assert target.read_text() == "five"
    holdfast.write(target, "five again", fence=5)  # equal: the same holder writes again
    holdfast.write(target, "seven", fence=7)
    assert target.read_text() == "seven"
    assert holdfast.accepted_fence(target) == 7


def test_interoperates_with_the_command_on_the_same_path(tmp: Path, state: Path) -> None:
    target = tmp / "shared"
    r = cli("write", "--fence", "10", str(target), data=b"from cli 10")
    assert r.returncode == 0, r.stderr
    with pytest.raises(holdfast.Fenced):
        holdfast.write(target, b"from python 9", fence=9)
    assert target.read_bytes() == b"from cli 10"
    holdfast.write(target, b"from python 11", fence=11)
    r = cli("write", "--fence", "10", str(target), data=b"from cli 10 again")
    assert r.returncode == 79, r.stderr
    assert str(target).encode() in r.stderr and b"fencing token 10 is lower than 11" in r.stderr
    assert target.read_bytes() == b"from python 11"
    assert holdfast.accepted_fence(target) == 11


def test_fence_must_be_a_token(tmp: Path, state: Path) -> None:
    target = tmp / "data"
    for bad in (-1, 2**64, "5", True, 1.5):
        with pytest.raises(TypeError):
            holdfast.write(target, b"x", fence=bad)  # type: ignore[arg-type]
    assert not target.exists()
    holdfast.write(target, b"plain")  # no fence: an ordinary write, not refused
    assert target.read_bytes() == b"plain"
