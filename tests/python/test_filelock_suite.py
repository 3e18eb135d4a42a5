"""filelock's own test suite (tox-dev/filelock tests/test_filelock.py, 3.9 era), re-expressed
against holdfast.FileLock and holdfast.SoftFileLock: the behaviour filelock users rely on.
Not applicable here: the log-message test (holdfast does not log), and the read-only folder/file
tests when running as root (root is never refused)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import holdfast

LOCK_TYPES = [holdfast.FileLock, holdfast.SoftFileLock]


class ExThread(threading.Thread):
    """A thread whose exception fails the test at join()."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(target=target, name=name)
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def join(self, timeout: Optional[float] = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise RuntimeError(f"thread {self.name} failed") from self.error


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_simple(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    with lock as locked:
        assert lock.is_locked
        assert lock is locked
    assert not lock.is_locked


@pytest.mark.skipif(os.geteuid() == 0, reason="root is never refused by file permissions")
@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_ro_folder(lock_type: type, tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            lock_type(str(tmp_path / "a")).acquire()
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_missing_directory(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a" / "b"))
    with pytest.raises(FileNotFoundError):
        lock.acquire()
    assert not lock.is_locked and lock.lock_counter == 0


def check_nests_three_deep(lock: Any, enter: Callable[[], Any]) -> None:
    """Enters `lock` three times nested through `enter()` (the lock itself, or lock.acquire()):
    each level yields the lock object, it stays locked until the outermost level exits."""
    with enter() as lock_1:
        assert lock.is_locked and lock is lock_1
        with enter() as lock_2:
            assert lock.is_locked and lock is lock_2
            with enter() as lock_3:
                assert lock.is_locked and lock is lock_3
            assert lock.is_locked
        assert lock.is_locked
    assert not lock.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_nested_context_manager(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    check_nests_three_deep(lock, lambda: lock)


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_nested_acquire(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    check_nests_three_deep(lock, lock.acquire)


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_nested_forced_release(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    with lock:
        assert lock.is_locked
        lock.acquire()
        assert lock.is_locked
        lock.release(force=True)
        assert not lock.is_locked
    assert not lock.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_threaded_shared_lock_obj(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    n = 100

    def work() -> None:
        for _ in range(n):
            with lock:
                assert lock.is_locked

    threads = [ExThread(work, f"t{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not lock.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_threaded_lock_different_lock_obj(lock_type: type, tmp_path: Path) -> None:
    rounds = 1000
    lock_1, lock_2 = lock_type(str(tmp_path / "a")), lock_type(str(tmp_path / "a"))

    def t_1() -> None:
        for _ in range(rounds):
            with lock_1:
                assert lock_1.is_locked
                assert not lock_2.is_locked

    def t_2() -> None:
        for _ in range(rounds):
            with lock_2:
                assert not lock_1.is_locked
                assert lock_2.is_locked

    threads = [(ExThread(t_1, f"t1_{i}"), ExThread(t_2, f"t2_{i}")) for i in range(10)]
    for a, b in threads:
        a.start()
        b.start()
    for a, b in threads:
        a.join()
        b.join()
    assert not lock_1.is_locked and not lock_2.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_timeout(lock_type: type, tmp_path: Path) -> None:
    lock_1, lock_2 = lock_type(str(tmp_path / "a")), lock_type(str(tmp_path / "a"))
    lock_1.acquire()
    assert lock_1.is_locked and not lock_2.is_locked
    with pytest.raises(holdfast.Timeout, match="The file lock '.*' could not be acquired."):
        lock_2.acquire(timeout=0.1)
    assert not lock_2.is_locked and lock_1.is_locked
    lock_1.release()
    assert not lock_1.is_locked and not lock_2.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_default_timeout(lock_type: type, tmp_path: Path) -> None:
    lock_1, lock_2 = lock_type(str(tmp_path / "a")), lock_type(str(tmp_path / "a"), timeout=0.1)
    assert lock_2.timeout == 0.1
    lock_1.acquire()
    with pytest.raises(holdfast.Timeout, match="The file lock '.*' could not be acquired."):
        lock_2.acquire()
    assert not lock_2.is_locked and lock_1.is_locked
    lock_2.timeout = 0
    assert lock_2.timeout == 0
    with pytest.raises(holdfast.Timeout, match="The file lock '.*' could not be acquired."):
        lock_2.acquire()
    assert not lock_2.is_locked and lock_1.is_locked
    lock_1.release()
    assert not lock_1.is_locked and not lock_2.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_context_release_on_exc(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    try:
        with lock as lock_1:
            assert lock is lock_1 and lock.is_locked
            raise Exception
    except Exception:
        assert not lock.is_locked


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_acquire_release_on_exc(lock_type: type, tmp_path: Path) -> None:
    lock = lock_type(str(tmp_path / "a"))
    try:
        with lock.acquire() as lock_1:
            assert lock is lock_1 and lock.is_locked
            raise Exception
    except Exception:
        assert not lock.is_locked


@pytest.mark.skipif(hasattr(sys, "pypy_version_info"), reason="del() does not trigger GC in PyPy")
@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_del(lock_type: type, tmp_path: Path) -> None:
    lock_1, lock_2 = lock_type(str(tmp_path / "a")), lock_type(str(tmp_path / "a"))
    lock_1.acquire()
    with pytest.raises(holdfast.Timeout):
        lock_2.acquire(timeout=0.1)
    del lock_1
    lock_2.acquire(timeout=60)  # filelock waits forever here; a bound only catches a hang
    assert lock_2.is_locked
    lock_2.release()


def test_cleanup_soft_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "a"
    lock = holdfast.SoftFileLock(str(lock_path))
    with lock:
        assert lock_path.exists()
    assert not lock_path.exists()
