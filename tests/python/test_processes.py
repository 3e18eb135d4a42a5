"""Multi-process behaviour: Ctrl-C in a blocked acquire, mixed holders (holdfast.FileLock,
filelock.FileLock, flock(1)) on one file, SoftFileLock reclaim after a crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest

import holdfast
from conftest import HANG_TIMEOUT, SOAK, child_env, lock_waiters, run_python, wait_until


def test_ctrl_c_interrupts_a_blocking_acquire(tmp_path: Path) -> None:
    lock_path = tmp_path / "a.lock"
    holder = filelock.FileLock(str(lock_path))
    holder.acquire()
    try:
        code = (
            "import sys, holdfast\n"
            "lock = holdfast.FileLock(sys.argv[1])\n"
            "try:\n"
            "    lock.acquire()\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', lock.is_locked, lock.lock_counter, flush=True)\n"
            "    sys.exit(42)\n"
            "sys.exit(1)\n"
        )
        child = run_python(code, str(lock_path), stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: lock_waiters(child.pid), "the child to block in acquire")
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=HANG_TIMEOUT)
            assert child.returncode == 42, out
            assert out.strip() == "interrupted False 0"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:
        holder.release()


def test_ctrl_c_interrupts_wait_like(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new content")
    (tmp_path / "dst").write_bytes(b"old")
    code = (
        "import sys, holdfast\n"
        "try:\n"
        "    print('waiting', flush=True)\n"
        "    holdfast.wait_like(sys.argv[1], sys.argv[2], timeout=-1, interval=0.05)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(42)\n"
        "sys.exit(1)\n"
    )
    child = run_python(code, str(tmp_path / "dst"), str(tmp_path / "src"), stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "waiting"
    # The wait watches the directory with inotify: once the child has an inotify descriptor it is
    # inside wait_like (real state, no sleep). One Ctrl-C must end it.
    def has_inotify() -> bool:
        fds = f"/proc/{child.pid}/fd"
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fds}/{fd}") == "anon_inode:inotify":
                    return True
        return False

    try:
        wait_until(has_inotify, "the child to enter wait_like")
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=HANG_TIMEOUT) == 42
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# One worker of the mixed test: takes the lock with its own tool, checks nobody else is inside
# (an O_EXCL marker) and does a read-modify-write of a counter (a lost update shows as a short
# count). Overlaps are appended to a file.
WORKER = r"""
import os, sys, time
kind, lock_path, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
marker = os.path.join(work, "inside")
def critical():
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(os.path.join(work, "overlaps"), "a") as f:
            f.write(kind + "\n")
        return
    os.close(fd)
    counter = os.path.join(work, "counter")
    with open(counter) as f:
        n = int(f.read())
    time.sleep(0.0005)
    with open(counter, "w") as f:
        f.write(str(n + 1))
    os.unlink(marker)
if kind == "holdfast":
    import holdfast
    lock = holdfast.FileLock(lock_path)
else:
    import filelock
    lock = filelock.FileLock(lock_path)
for _ in range(rounds):
    with lock:
        critical()
"""

FLOCK_WORKER = r"""
set -C
i=0
while [ $i -lt "$3" ]; do
  flock "$1" sh -c '
    set -C
    if ! : > "$0/inside" 2>/dev/null; then echo flock >> "$0/overlaps"; exit 0; fi
    n=$(cat "$0/counter"); echo $((n + 1)) > "$0/counter.tmp"; mv -f "$0/counter.tmp" "$0/counter"
    rm -f "$0/inside"' "$2"
  i=$((i + 1))
done
"""


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock(1) not installed")
def test_mixed_holders_never_overlap(tmp_path: Path) -> None:
    lock_path = tmp_path / "shared.lock"
    work = tmp_path / "work"
    work.mkdir()
    (work / "counter").write_text("0")
    rounds = 200 if SOAK else 40
    procs = []
    for kind in ("holdfast", "holdfast", "filelock", "filelock"):
        procs.append(run_python(WORKER, kind, str(lock_path), str(work), str(rounds)))
    for _ in range(2):
        procs.append(subprocess.Popen(["sh", "-c", FLOCK_WORKER, "sh", str(lock_path), str(work), str(rounds)]))
    for p in procs:
        assert p.wait(timeout=600) == 0
    overlaps = (work / "overlaps").read_text() if (work / "overlaps").exists() else ""
    assert overlaps == "", f"overlapping holders: {overlaps.split()}"
    assert int((work / "counter").read_text()) == rounds * len(procs)  # no lost update


def test_soft_file_lock_reclaimed_after_holder_crash(tmp_path: Path) -> None:
    lock_path = tmp_path / "soft.lock"
    code = (
        "import os, sys, holdfast\n"
        "lock = holdfast.SoftFileLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    child = run_python(code, str(lock_path), stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=HANG_TIMEOUT)
    assert out.strip() == "held" and child.returncode == -signal.SIGKILL
    assert lock_path.exists()  # the crashed holder left its dotlock behind
    # filelock's SoftFileLock is wedged by it forever...
    with pytest.raises(filelock.Timeout):
        filelock.SoftFileLock(str(lock_path)).acquire(timeout=0.1)
    # ...holdfast proves the holder dead and reclaims it.
    assert holdfast.holder(lock_path).state == "stale"
    lock = holdfast.SoftFileLock(lock_path, timeout=0)
    with lock:
        assert lock.token is not None and lock.holder().pids == [os.getpid()]
    assert not lock_path.exists()


def test_soft_file_lock_of_a_live_holder_is_held(tmp_path: Path) -> None:
    lock_path = tmp_path / "soft.lock"
    code = (
        "import sys, holdfast\n"
        "lock = holdfast.SoftFileLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = run_python(code, str(lock_path), stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert holdfast.holder(lock_path).pids == [child.pid]
        with pytest.raises(holdfast.Timeout):
            holdfast.SoftFileLock(lock_path).acquire(timeout=0.2)
        with pytest.raises(filelock.Timeout):  # and it excludes filelock's SoftFileLock
            filelock.SoftFileLock(str(lock_path)).acquire(timeout=0)
    finally:
        child.communicate("", timeout=HANG_TIMEOUT)
    with holdfast.SoftFileLock(lock_path, timeout=0):
        pass


def test_filelock_soft_lock_excludes_holdfast(tmp_path: Path) -> None:
    lock_path = tmp_path / "soft.lock"
    theirs = filelock.SoftFileLock(str(lock_path))
    with theirs:
        # A marker with no record names no process: holdfast cannot prove anyone dead: held.
        with pytest.raises(holdfast.Timeout):
            holdfast.SoftFileLock(lock_path).acquire(timeout=0.2)


@pytest.mark.parametrize("lock_type", [holdfast.FileLock, holdfast.SoftFileLock])
def test_forked_child_never_releases_the_parents_lock(tmp_path: Path, lock_type: type) -> None:
    lock_path = tmp_path / "a.lock"
    lock = lock_type(lock_path)
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # the child: its copy is not a holder; releasing and collecting it is harmless
        try:
            ok = not lock.is_locked and lock.lock_counter == 0 and lock.token is None
            lock.release(force=True)
            del lock
            import gc

            gc.collect()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child saw itself as the holder"
    assert lock.is_locked
    # Still held by the parent: nobody else gets it (filelock's child would have unlocked it).
    other = filelock.FileLock(str(lock_path)) if lock_type is holdfast.FileLock else filelock.SoftFileLock(str(lock_path))
    with pytest.raises(filelock.Timeout):
        other.acquire(timeout=0)
    assert holdfast.holder(lock_path).state == "held"
    lock.release()
    other.acquire(timeout=0)
    other.release()
