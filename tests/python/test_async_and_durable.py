"""AsyncFileLock under asyncio; write / wait_like / digest and their errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Iterator

import filelock
import pytest

import holdfast
from conftest import lock_waiters, wait_until


def test_async_lock_basic(tmp_path: Path) -> None:
    async def main() -> None:
        lock = holdfast.AsyncFileLock(tmp_path / "a.lock")
        async with lock:
            assert lock.is_locked and lock.lock_counter == 1 and lock.token
            async with await lock.acquire():  # re-entry
                assert lock.lock_counter == 2
            with pytest.raises(holdfast.Timeout):
                await holdfast.AsyncFileLock(tmp_path / "a.lock").acquire(timeout=0.1)
        assert not lock.is_locked

    asyncio.run(main())


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[filelock.FileLock]:
    """tmp_path/a.lock held by a python-filelock FileLock of this process; the test releases it
    (released at teardown if the test failed first)."""
    lock = filelock.FileLock(str(tmp_path / "a.lock"))
    lock.acquire()
    yield lock
    lock.release(force=True)


async def blocked_acquire(lock: holdfast.AsyncFileLock) -> asyncio.Task:
    """Starts `lock.acquire()` as a task and returns it once it waits in the kernel (this process
    shows a blocked request in /proc/locks). The event loop keeps running meanwhile: the wait is
    in a worker thread."""
    task = asyncio.create_task(lock.acquire())
    while not lock_waiters(os.getpid()):
        await asyncio.sleep(0.01)
    return task


def test_async_wait_does_not_block_the_event_loop(tmp_path: Path, holder: filelock.FileLock) -> None:
    async def main() -> None:
        lock = holdfast.AsyncFileLock(tmp_path / "a.lock")
        task = await blocked_acquire(lock)
        assert not task.done()
        holder.release()
        await asyncio.wait_for(task, 60)
        assert lock.is_locked
        await lock.release()

    asyncio.run(main())


def test_async_cancel_rolls_back(tmp_path: Path, holder: filelock.FileLock) -> None:
    async def main() -> None:
        lock = holdfast.AsyncFileLock(tmp_path / "a.lock")
        task = await blocked_acquire(lock)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        holder.release()
        # The worker must give up (or hand back a late grant): the lock ends free.
        other = filelock.FileLock(str(tmp_path / "a.lock"))
        for _ in range(6000):
            try:
                other.acquire(timeout=0)
                break
            except filelock.Timeout:
                await asyncio.sleep(0.01)
        assert other.is_locked, "a cancelled acquire kept the lock"
        other.release()
        assert not lock.is_locked and lock.lock_counter == 0

    asyncio.run(main())


def test_write_replaces_atomically_and_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o600)
    holdfast.write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    holdfast.write(tmp_path / "fresh", "text", mode=0o640, sync=False)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if ".holdfast-tmp." in p.name] == []


def test_write_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(holdfast.NotFound) as caught:
        holdfast.write(tmp_path / "missing" / "f", b"x")
    assert "missing" in str(caught.value) and caught.value.exit_code == 66
    with pytest.raises(holdfast.Error) as caught2:
        holdfast.write(tmp_path, b"x")  # a directory
    assert str(tmp_path) in str(caught2.value)


def test_digest_matches_sha256sum_and_bytes(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    assert holdfast.digest(tmp_path / "f", "sha256") == "sha256:" + hashlib.sha256(data).hexdigest()
    assert holdfast.digest(tmp_path / "f") == holdfast.digest(data)
    assert holdfast.digest(b"").startswith("xxh128:")
    with pytest.raises(holdfast.UsageError):
        holdfast.digest(b"x", "md5")
    with pytest.raises(FileNotFoundError):
        holdfast.digest(tmp_path / "nope")


def test_wait_like_matches_when_the_content_arrives(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"version 2")
    dst.write_bytes(b"version 1")
    with pytest.raises(holdfast.WaitTimeout) as caught:
        holdfast.wait_like(dst, src, timeout=0.2, interval=0.05)
    assert isinstance(caught.value, TimeoutError) and caught.value.difference
    writer = threading.Thread(target=lambda: holdfast.write(dst, b"version 2"))
    writer.start()
    holdfast.wait_like(dst, src, timeout=60, interval=0.05)
    writer.join()
    with pytest.raises(FileNotFoundError):
        holdfast.wait_like(dst, tmp_path / "no-such-source", timeout=0.1)
