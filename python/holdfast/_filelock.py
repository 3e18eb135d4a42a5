"""A drop-in for python filelock (``filelock.FileLock``, ``SoftFileLock``, ``AsyncFileLock``).

Same API and semantics as filelock (Debian's python3-filelock is the reference): ``acquire(timeout=,
poll_interval=, blocking=)`` returning a context proxy, ``release(force=)``, ``is_locked``,
``lock_counter`` re-entrancy, the context manager and decorator, ``Timeout`` (a ``TimeoutError``),
``lock_file`` and the ``timeout`` property. Differences, all deliberate (docs/PYTHON.md):

- ``FileLock`` takes flock(2) on the path through holdfast's flock backend, so it excludes
  ``filelock.FileLock`` and ``flock(1)`` on the same file. It waits in the kernel (no 50 ms poll;
  ``poll_interval`` is accepted and ignored), with the GIL released, and Ctrl-C interrupts it.
- Every grant has a fencing ``token`` and a holder record readable by ``holder()``.
- ``SoftFileLock`` is a holdfast dotlock: a lock left by a crashed process is reclaimed once the
  holder is proven dead (pid + start time + boot id + host); filelock's never is.
- Not thread-local by default: one lock object is one holder, whichever thread calls; a
  ``release()`` from another thread releases it. ``thread_local=True`` gives each thread its own
  holder (two threads then exclude each other like two processes).
- A forked child does not hold its parent's locks: its copies start unlocked, and releasing or
  collecting them never unlocks the parent (filelock's child would unlock the parent's flock).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
import warnings
import weakref
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional

from . import _native
from ._errors import Timeout

_EXCLUSIVE = 0


@dataclass(frozen=True)
class HolderInfo:
    """Who holds a lock path, read without taking it (``holdfast holder``)."""

    state: str  # "free", "held" (verified alive, or unverifiable: fail closed), "stale"
    backend: str
    kernel_lock_held: bool
    reason: str
    record: Optional[dict[str, Any]]  # the last holder record, if readable
    token: Optional[int] = None  # on etcd, while held: the holder's fencing token (its key's create revision)

    @property
    def pids(self) -> list[int]:
        """The pids named in the holder record (empty if none)."""
        if not self.record:
            return []
        return [int(p["pid"]) for p in self.record.get("processes", [])]


def holder(path: str | os.PathLike[str]) -> HolderInfo:
    """Reports who holds the lock at ``path`` without taking it."""
    import json

    _state, text = _native.holder(os.fspath(path))
    info = json.loads(text)
    return HolderInfo(info["state"], info["backend"], info["kernel_lock_held"], info["reason"], info["record"])


class _Context:
    """One holder's state: the open lock path, whether it holds the grant, the re-entrancy counter."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        # _native.LockFile, opened on first acquire and kept for re-use; it keeps the grant itself
        # (hold/unhold), so a grant costs no Python object.
        self.file: Any = None
        self.held = False
        self.counter = 0
        _contexts.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: the grant belongs to the parent. Forget it without releasing, so
        that neither release() nor garbage collection in the child unlocks the parent's lock
        (flock and OFD locks live on the open file description the child shares)."""
        self.mutex = threading.Lock()  # another thread may have held it at fork time
        if self.held and self.file is not None:
            self.file.forget()
        self.held = False
        self.counter = 0
        self.file = None  # closes the child's copy only; the parent's descriptor keeps the lock


_contexts: "weakref.WeakSet[_Context]" = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for context in list(_contexts):
        context.forget_after_fork()


os.register_at_fork(after_in_child=_forget_all_after_fork)


class _ThreadLocalContext(threading.local):
    def __init__(self) -> None:
        self.context = _Context()


class AcquireReturnProxy:
    """Returned by acquire(): ``with lock.acquire():`` releases on exit without acquiring twice."""

    def __init__(self, lock: BaseFileLock) -> None:
        self.lock = lock

    def __enter__(self) -> BaseFileLock:
        return self.lock

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.lock.release()


class BaseFileLock(contextlib.ContextDecorator):
    """filelock's BaseFileLock over a holdfast lock backend."""

    _backend = _native.BACKEND_FLOCK

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        timeout: float = -1,
        *,
        thread_local: bool = False,
        blocking: bool = True,
    ) -> None:
        self._lock_file = os.fspath(lock_file)
        self._timeout = float(timeout)
        self._blocking = blocking
        self._thread_local = thread_local
        self._shared = None if thread_local else _Context()
        self._local = _ThreadLocalContext() if thread_local else None

    def _context(self) -> _Context:
        if self._shared is not None:
            return self._shared
        assert self._local is not None
        return self._local.context

    @property
    def lock_file(self) -> str:
        """The path of the lock file."""
        return self._lock_file

    @property
    def timeout(self) -> float:
        """The default timeout of acquire(), in seconds (< 0: wait forever)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | str) -> None:
        self._timeout = float(value)

    @property
    def blocking(self) -> bool:
        """The default of acquire()'s ``blocking``."""
        return self._blocking

    @blocking.setter
    def blocking(self, value: bool) -> None:
        self._blocking = bool(value)

    def is_thread_local(self) -> bool:
        """Whether each thread is its own holder (False by default, unlike filelock >= 3.12)."""
        return self._thread_local

    @property
    def is_locked(self) -> bool:
        """Whether this object (this thread's, if thread-local) holds the lock."""
        return self._context().held

    @property
    def lock_counter(self) -> int:
        """How many acquire() calls are not yet matched by release()."""
        return self._context().counter

    @property
    def token(self) -> Optional[int]:
        """The fencing token of the current grant (None if not held): strictly increasing per lock
        path across holders, processes and crashes. Pass it to the resource; reject lower ones."""
        context = self._context()
        return context.file.token if context.held else None

    def holder(self) -> HolderInfo:
        """Who holds this lock path now (any process), read without taking it."""
        return holder(self._lock_file)

    def acquire(
        self,
        timeout: float | None = None,
        poll_interval: float = 0.05,
        *,
        poll_intervall: float | None = None,
        blocking: bool | None = None,
    ) -> AcquireReturnProxy:
        """Acquires the lock, or increments the counter if this holder has it already.

        ``timeout`` None: the default ``timeout``; < 0 waits forever; 0 tries once. ``blocking``
        False tries once. Raises ``Timeout`` when not acquired in time. ``poll_interval`` is
        accepted for compatibility; holdfast waits in the kernel instead of polling.
        """
        del poll_interval
        if poll_intervall is not None:
            warnings.warn("use poll_interval instead of poll_intervall", DeprecationWarning, stacklevel=2)
        if timeout is None:
            timeout = self._timeout
        if blocking is None:
            blocking = self._blocking
        if not blocking:
            timeout = 0
        elif not timeout <= 1e9:  # inf, nan (filelock waits forever on both), huge: forever
            timeout = -1
        context = self._shared if self._shared is not None else self._context()
        mutex = context.mutex
        if timeout < 0:
            mutex.acquire()
            left = -1.0
        else:
            start = time.monotonic()
            if not mutex.acquire(True, timeout):
                raise Timeout(self._lock_file)
            left = 0.0 if timeout == 0 else max(0.0, timeout - (time.monotonic() - start))
        try:
            if not context.held:
                if context.file is None:
                    context.file = self._open()
                if not context.file.hold(left):
                    raise Timeout(self._lock_file)
                context.held = True
            context.counter += 1
        finally:
            mutex.release()
        return AcquireReturnProxy(self)

    def _open(self) -> Any:
        """The native lock this object takes (opened once per holder, kept for re-use)."""
        return _native.LockFile(self._lock_file, self._backend, _EXCLUSIVE)

    def release(self, force: bool = False) -> None:
        """Decrements the counter and releases the lock when it reaches 0 (at once if ``force``).
        The lock file itself stays (deleting it would split waiters across inodes)."""
        context = self._shared if self._shared is not None else self._context()
        with context.mutex:
            if not context.held:
                return
            context.counter -= 1
            if context.counter == 0 or force:
                context.held = False
                context.counter = 0
                context.file.unhold()

    def __enter__(self) -> BaseFileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release(force=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._lock_file!r}, timeout={self._timeout})"


class FileLock(BaseFileLock):
    """filelock.FileLock: flock(2) on ``lock_file`` (created if missing, never deleted)."""

    _backend = _native.BACKEND_FLOCK


class UnixFileLock(FileLock):
    """Alias of FileLock, as filelock names its flock implementation."""


class SoftFileLock(BaseFileLock):
    """filelock.SoftFileLock: the lock is the existence of ``lock_file``, created exclusively with
    a holder record. Unlike filelock's, a file left by a crashed holder is reclaimed (by atomic
    rename) once every process it names is proven dead; an unverifiable one (another host) is held."""

    _backend = _native.BACKEND_EXCL


class Lock(BaseFileLock):
    """A lock NAME on a lock service, named by ``backend`` as in ``holdfast lock --backend``:
    ``"etcd://HOST:PORT[,HOST:PORT...]/PREFIX"`` (docs/ETCD.md). It is the same lock as
    ``holdfast lock --backend URL NAME`` and ``etcdctl lock PREFIX/NAME``: all three exclude each
    other, across machines. The FileLock API (acquire/release, counter, context manager, Timeout),
    exclusive only; waiters are served in order; Ctrl-C ends a wait within about a second.

    ``token`` is the grant's fencing token (the key's create revision: strictly increasing across
    holders of NAME); pass it to the resource (``holdfast.write(..., fence=token)``).

    The grant lives on a lease of ``ttl`` seconds, renewed every ttl/3 by a thread. If renewing
    fails for long enough that the lease may have expired, the lock is *lost*: ``lost`` becomes
    True and ``lost_fd`` readable. Nothing stops this process then (unlike the command, which
    stops its command): check ``lost``, or watch ``lost_fd``, before acting as the holder.
    """

    def __init__(
        self,
        name: str,
        backend: str,
        timeout: float = -1,
        *,
        ttl: float = 10,
        cacert: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        thread_local: bool = False,
        blocking: bool = True,
    ) -> None:
        super().__init__(name, timeout, thread_local=thread_local, blocking=blocking)
        self._backend_url = backend
        self._remote = (float(ttl), cacert or "", cert or "", key or "", user or "", password or "")
        # Fails now, not at the first acquire, on a malformed URL (nothing is contacted yet).
        _native.LockFile.open_url(backend, name, *self._remote)

    def _open(self) -> Any:
        return _native.LockFile.open_url(self._backend_url, self._lock_file, *self._remote)

    @property
    def name(self) -> str:
        """The lock name (the key prefix PREFIX/NAME/ in etcd)."""
        return self._lock_file

    @property
    def backend(self) -> str:
        """The backend URL."""
        return self._backend_url

    @property
    def lost_fd(self) -> Optional[int]:
        """While held: a descriptor that becomes readable once the lock is lost (None if not held)."""
        context = self._context()
        return context.file.fd if context.held else None

    @property
    def lost(self) -> bool:
        """True if the held grant is lost (its lease may have expired); False if held and valid."""
        import select

        fd = self.lost_fd
        if fd is None:
            return False
        return bool(select.select([fd], [], [], 0)[0])

    def holder(self) -> HolderInfo:
        """Who holds NAME now (any process, any machine), read from etcd without taking it (one
        linearizable read, as ``holdfast holder --backend URL NAME``): state "held" or "free",
        backend "etcd", kernel_lock_held False, the holder's record (who and where; None for a
        key with no holdfast record, e.g. ``etcdctl lock``'s) and its fencing ``token``. Raises
        as acquire() does when the cluster cannot be used."""
        import json

        _state, text = _native.LockFile.open_url(self._backend_url, self._lock_file, *self._remote).holder()
        info = json.loads(text)
        return HolderInfo(
            info["state"], info["backend"], info["kernel_lock_held"], info["reason"], info["record"], info.get("token")
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._lock_file!r}, backend={self._backend_url!r}, timeout={self._timeout})"


class AsyncAcquireReturnProxy:
    """Returned by AsyncFileLock.acquire(): ``async with await lock.acquire():`` releases on exit."""

    def __init__(self, lock: AsyncFileLock) -> None:
        self.lock = lock

    async def __aenter__(self) -> AsyncFileLock:
        return self.lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.lock.release()


class _Cancelled(Exception):
    pass


class AsyncFileLock:
    """filelock.AsyncFileLock: the FileLock API with coroutine acquire/release and ``async with``.

    The wait runs in a worker thread (``executor``, default the loop's), truly blocked in the
    kernel, never blocking the event loop. Cancelling acquire() rolls back: a grant obtained after
    the cancellation is released at once.
    """

    _sync_class: type[BaseFileLock] = FileLock

    def __init__(
        self,
        lock_file: str | os.PathLike[str],
        timeout: float = -1,
        *,
        blocking: bool = True,
        executor: Optional[Executor] = None,
    ) -> None:
        self._lock = self._sync_class(lock_file, timeout, blocking=blocking)
        self._executor = executor

    lock_file = property(lambda self: self._lock.lock_file, doc="The path of the lock file.")
    is_locked = property(lambda self: self._lock.is_locked, doc="Whether this object holds the lock.")
    lock_counter = property(lambda self: self._lock.lock_counter, doc="Unmatched acquire() calls.")
    token = property(lambda self: self._lock.token, doc="Fencing token of the grant (None if not held).")

    @property
    def timeout(self) -> float:
        return self._lock.timeout

    @timeout.setter
    def timeout(self, value: float | str) -> None:
        self._lock.timeout = value  # type: ignore[assignment]

    def holder(self) -> HolderInfo:
        return self._lock.holder()

    def _wait(self, timeout: float, cancel: threading.Event) -> None:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            step = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            try:
                self._lock.acquire(timeout=step)
            except Timeout:
                if cancel.is_set():
                    raise _Cancelled() from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                continue
            if cancel.is_set():
                self._lock.release()
                raise _Cancelled()
            return

    async def acquire(
        self,
        timeout: float | None = None,
        poll_interval: float = 0.05,
        *,
        blocking: bool | None = None,
    ) -> AsyncAcquireReturnProxy:
        """As FileLock.acquire, without blocking the event loop."""
        del poll_interval
        if timeout is None:
            timeout = self._lock.timeout
        if blocking is None:
            blocking = self._lock.blocking
        if not blocking:
            timeout = 0
        if self._lock.is_locked:  # re-entry never waits
            self._lock.acquire(timeout=0)
            return AsyncAcquireReturnProxy(self)
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        future = loop.run_in_executor(self._executor, functools.partial(self._wait, timeout, cancel))
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()

            def roll_back(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._lock.release()

            future.add_done_callback(roll_back)
            raise
        return AsyncAcquireReturnProxy(self)

    async def release(self, force: bool = False) -> None:
        """As FileLock.release (never blocks: releasing is one system call)."""
        self._lock.release(force=force)

    async def __aenter__(self) -> AsyncFileLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.lock_file!r}, timeout={self.timeout})"


class AsyncSoftFileLock(AsyncFileLock):
    """AsyncFileLock over SoftFileLock."""

    _sync_class = SoftFileLock
