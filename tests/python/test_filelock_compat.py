"""holdfast.FileLock as a drop-in for python filelock: filelock's documented examples (docs/index.rst
tutorial) and the semantics of Debian's python3-filelock (_api.py), run against holdfast."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import filelock
import pytest

import holdfast
from conftest import lock_waiters, wait_until
import os


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_readme_example() -> None:
    lock = holdfast.FileLock("high_ground.txt.lock")
    with lock:
        with open("high_ground.txt", "a") as f:
            f.write("You were the chosen one.")
    assert Path("high_ground.txt").read_text() == "You were the chosen one."
    assert not lock.is_locked


def test_tutorial_acquire_styles_and_decorator() -> None:
    file_path = "high_ground.txt"
    lock = holdfast.FileLock("high_ground.txt.lock", timeout=1)
    with lock:
        with open(file_path, "a") as f:
            f.write("Hello there!")
    lock.acquire()
    try:
        with open(file_path, "a") as f:
            f.write("General Kenobi!")
    finally:
        lock.release()
    seen = []

    @lock
    def decorated() -> None:
        seen.append(lock.is_locked)

    decorated()
    assert seen == [True]
    assert not lock.is_locked
    assert Path(file_path).read_text() == "Hello there!General Kenobi!"


def test_tutorial_timeout_when_another_instance_holds_it() -> None:
    other = filelock.FileLock("high_ground.txt.lock")  # "another instance of this application"
    lock = holdfast.FileLock("high_ground.txt.lock", timeout=1)
    with other:
        with pytest.raises(holdfast.Timeout) as caught:
            with lock.acquire(timeout=0.3):
                pytest.fail("acquired a held lock")
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.lock_file == "high_ground.txt.lock"
    assert str(caught.value) == "The file lock 'high_ground.txt.lock' could not be acquired."
    with lock.acquire(timeout=10):
        assert lock.is_locked


def test_tutorial_recursive() -> None:
    lock = holdfast.FileLock("high_ground.txt.lock", timeout=1)
    file_path = "high_ground.txt"

    def cite1() -> None:
        with lock:
            assert lock.lock_counter == 2
            with open(file_path, "a") as f:
                f.write("I hate it when he does that.")

    def cite2() -> None:
        with lock:
            with open(file_path, "a") as f:
                f.write("You don't want to sell me death sticks.")

    with lock:
        cite1()
        cite2()
        assert lock.is_locked and lock.lock_counter == 1
    assert not lock.is_locked and lock.lock_counter == 0


def test_acquire_returns_proxy_that_does_not_reacquire() -> None:
    lock = holdfast.FileLock("a.lock")
    with lock.acquire() as got:
        assert got is lock
        assert lock.lock_counter == 1
    assert lock.lock_counter == 0


def test_nested_acquire_and_forced_release() -> None:
    lock = holdfast.FileLock("a.lock")
    lock.acquire()
    lock.acquire()
    lock.acquire()
    assert lock.lock_counter == 3
    lock.release()
    assert lock.is_locked and lock.lock_counter == 2
    lock.release(force=True)
    assert not lock.is_locked and lock.lock_counter == 0
    lock.release()  # releasing an unlocked lock is a no-op, as in filelock
    assert lock.lock_counter == 0


def test_context_releases_on_exception() -> None:
    lock = holdfast.FileLock("a.lock")
    with pytest.raises(ValueError):
        with lock:
            raise ValueError("boom")
    assert not lock.is_locked


def test_non_blocking_and_timeout_zero() -> None:
    holder = holdfast.FileLock("a.lock")
    lock = holdfast.FileLock("a.lock")
    with holder:
        with pytest.raises(holdfast.Timeout):
            lock.acquire(blocking=False)
        with pytest.raises(holdfast.Timeout):
            lock.acquire(timeout=0)
        with pytest.raises(holdfast.Timeout):
            holdfast.FileLock("a.lock", timeout=0).acquire()
        assert lock.lock_counter == 0 and not lock.is_locked  # a failed acquire leaves no count
    lock.acquire(blocking=False)
    assert lock.is_locked
    lock.release()


def test_default_timeout_property() -> None:
    lock = holdfast.FileLock("a.lock")
    assert lock.timeout == -1
    lock.timeout = "0.25"  # filelock's setter takes anything float() does
    assert lock.timeout == 0.25
    assert lock.lock_file == "a.lock"
    other = holdfast.FileLock(Path("a.lock"), timeout=0.1)
    assert other.lock_file == "a.lock"  # PathLike accepted, stored as str


def test_poll_interval_keywords_accepted() -> None:
    lock = holdfast.FileLock("a.lock")
    with lock.acquire(timeout=1, poll_interval=0.01):
        pass
    with pytest.warns(DeprecationWarning):  # as filelock warns
        with lock.acquire(poll_intervall=0.01):
            pass


def test_del_releases() -> None:
    lock = holdfast.FileLock("a.lock")
    lock.acquire()
    lock.acquire()
    del lock
    gc.collect()
    other = filelock.FileLock("a.lock")
    other.acquire(timeout=0)
    other.release()


def test_lock_file_is_kept_and_not_deleted() -> None:
    lock = holdfast.FileLock("a.lock")
    with lock:
        pass
    assert Path("a.lock").exists()  # deleting it would let waiters split across two inodes


def test_missing_directory_is_an_oserror_naming_the_path() -> None:
    lock = holdfast.FileLock("missing/dir/a.lock")
    with pytest.raises(holdfast.Error) as caught:
        lock.acquire(timeout=0)
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value, FileNotFoundError)
    assert "missing/dir" in str(caught.value)
    assert caught.value.errno == 2
    assert lock.lock_counter == 0


def test_token_and_holder() -> None:
    lock = holdfast.FileLock("a.lock")
    assert lock.token is None
    tokens = []
    for _ in range(3):
        with lock:
            tokens.append(lock.token)
            info = lock.holder()
            assert info.state == "held"
            assert info.kernel_lock_held
    assert tokens == sorted(tokens) and len(set(tokens)) == 3  # strictly increasing
    assert holdfast.holder("a.lock").state == "free"


def test_not_thread_local_release_from_other_thread() -> None:
    """filelock's thread-local default silently ignores a release() from another thread; ours
    releases (one object = one holder, whatever the thread)."""
    lock = holdfast.FileLock("a.lock")
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert not lock.is_locked
    other = filelock.FileLock("a.lock")
    other.acquire(timeout=0)  # really released in the kernel
    other.release()


def test_threads_share_one_holder_by_default() -> None:
    lock = holdfast.FileLock("a.lock")
    lock.acquire()
    t = threading.Thread(target=lambda: lock.acquire(timeout=0))
    t.start()
    t.join()
    assert lock.lock_counter == 2  # re-entry from another thread, as with filelock's shared object
    lock.release(force=True)


def test_thread_local_holders_exclude_each_other() -> None:
    lock = holdfast.FileLock("a.lock", thread_local=True)
    lock.acquire()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            lock.acquire(timeout=0)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], holdfast.Timeout)
    assert lock.is_thread_local()
    lock.release()


def test_gil_released_while_blocking() -> None:
    """A thread blocked in acquire() must not hold the GIL: otherwise this thread could never run
    to release the lock, and the test would hang."""
    first = holdfast.FileLock("a.lock")
    second = holdfast.FileLock("a.lock")  # another object: excludes like another process
    first.acquire()
    got = threading.Event()

    def waiter() -> None:
        second.acquire()
        got.set()

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: lock_waiters(os.getpid()), "the waiter to block in the kernel")
    assert not got.is_set()
    first.release()
    t.join(timeout=60)
    assert got.is_set() and second.is_locked
    second.release()


def test_infinite_and_huge_timeouts_mean_forever() -> None:
    lock = holdfast.FileLock("a.lock", timeout=float("inf"))
    with lock:
        pass
    with lock.acquire(timeout=1e30):
        assert lock.is_locked
    holder = holdfast.FileLock("a.lock")
    with holder:
        with pytest.raises(holdfast.Timeout):
            lock.acquire(timeout=float("nan"), blocking=False)
