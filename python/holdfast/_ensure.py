"""ensure / status / stop: exactly one instance of a daemon, from Python (docs/ENSURE.md).

``ensure()`` is the whole of a build tool's ``ensure_daemon_running()``: concurrent callers in any
processes get the same verified, ready instance and at most one of them spawns it. Liveness is
the kernel's instance lock, never a pid on faith: a stale record naming a recycled pid is reported
stale, and ``stop()`` never signals a process it has not verified.
"""

from __future__ import annotations

import json
import math
import os
import signal as _signal
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import _native
from ._errors import ReadyTimeout


class Instance:
    """The verified, ready instance ensure() returned.

    ``pid``, ``start_time`` (/proc/PID/stat field 22), ``state`` ("ready"), ``ready``, ``started``
    (True if this call spawned it), ``waited`` (seconds spent in ensure()), ``record`` (the
    instance record as a dict, parsed on first access: the warm path does not pay for it).
    """

    __slots__ = ("name", "pid", "start_time", "state", "ready", "started", "waited", "_record_json", "_record")

    def __init__(self, name: str, pid: int, start_time: int, ready: bool, started: bool, waited: float,
                 record_json: str) -> None:
        self.name = name
        self.pid = pid
        self.start_time = start_time
        self.state = "ready" if ready else "starting"
        self.ready = ready
        self.started = started
        self.waited = waited
        self._record_json = record_json
        self._record: Optional[dict[str, Any]] = None

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = json.loads(self._record_json) if self._record_json else {}
        return self._record

    def __repr__(self) -> str:
        return (f"Instance(name={self.name!r}, pid={self.pid}, start_time={self.start_time}, state={self.state!r}, "
                f"started={self.started}, waited={self.waited:.6f})")


@dataclass(frozen=True)
class Status:
    """What status() found. ``state``: "ready", "running" (lock held, not ready yet), "stopped",
    "stale" (lock free but the record says it runs: it died without cleanup), or — where the
    library reports it — "unknown" (lock held but the record does not verify)."""

    name: str
    state: str
    lock_held: bool
    reason: str
    record: Optional[dict[str, Any]]

    @property
    def running(self) -> bool:
        """True when an instance holds the instance lock (ready, starting or unverifiable): the
        kernel lock is the truth, whatever the record says."""
        return self.lock_held


@dataclass(frozen=True)
class StopResult:
    was_running: bool
    pid: int  # the process signalled, 0 if none
    killed: bool  # SIGKILL was sent


def _dir(state_dir: Optional[str | os.PathLike[str]]) -> str:
    return "" if state_dir is None else os.fspath(state_dir)


def _ms(seconds: Optional[float]) -> int:
    """Seconds to the C API's milliseconds: None, negative or infinite = -1 (forever)."""
    if seconds is None or seconds < 0 or math.isinf(seconds):
        return -1
    return int(seconds * 1000)


def ensure(
    name: str,
    argv: Sequence[str],
    *,
    ready: str = "none",
    timeout: float = 30.0,
    state_dir: Optional[str | os.PathLike[str]] = None,
) -> Instance:
    """Ensures exactly one instance ``name`` runs ``argv`` and is ready; returns it.

    ``ready``: "none", "notify" (sd_notify READY=1), "fd:N" (a newline on fd N), "tcp:HOST:PORT",
    "unix:PATH", "file:PATH". Returns at once if a verified instance is ready; waits if one is
    starting; otherwise starts it. Raises StartFailure if it failed before ready (``exit_status``,
    ``log_tail``), ReadyTimeout if not ready within ``timeout`` seconds (it keeps starting),
    UsageError for a bad name or spec.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of strings, not a string")
    result = _native.ensure(name, list(map(os.fspath, argv)), ready, _ms(timeout), _dir(state_dir))
    if result[0] == _native.TIMEOUT:
        raise ReadyTimeout(result[1], name, 0, 75)
    _, pid, start_time, is_ready, started, waited_ns, record = result
    return Instance(name, pid, start_time, is_ready, started, waited_ns / 1e9, record)


def status(name: str, *, state_dir: Optional[str | os.PathLike[str]] = None) -> Status:
    """The status of instance ``name``, judged by its kernel lock (takes no lock)."""
    _state, text = _native.status(name, _dir(state_dir))
    info = json.loads(text)
    return Status(info["name"], info["state"], info["lock_held"], info["reason"], info["record"])


def stop(
    name: str,
    *,
    state_dir: Optional[str | os.PathLike[str]] = None,
    signal: int = _signal.SIGTERM,
    timeout: float = 10.0,
    kill_after: Optional[float] = None,
) -> StopResult:
    """Stops the verified instance: signals it only if the recorded identity matches the process
    holding the instance lock, then waits up to ``timeout`` seconds for the lock to be released
    (SIGKILL after ``kill_after`` seconds if given). Returns was_running=False if none runs.
    Raises CorruptRecord if the lock is held but the record does not verify (nothing signalled),
    ReadyTimeout-like Error (exit 75) if it still runs after the timeout."""
    result = _native.stop(name, _dir(state_dir), int(signal), _ms(timeout), _ms(kill_after))
    if result[0] == _native.TIMEOUT:
        from ._errors import Error

        raise Error(result[1], name, 0, 75)
    _, was_running, pid, killed = result
    return StopResult(was_running, pid, killed)
