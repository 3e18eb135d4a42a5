"""ensure / status / stop: exactly one instance of a daemon, from Python (docs/ENSURE.md).

``ensure()`` is the whole of a build tool's ``ensure_daemon_running()``: concurrent callers in any
processes get the same verified, ready instance and at most one of them spawns it. Liveness is
the kernel's instance lock, never a pid on faith: a stale record naming a recycled pid is reported
stale, and ``stop()`` never signals a process it has not verified.

With ``backend="etcd://HOST:PORT[,HOST:PORT...]/PREFIX"`` the three work across machines
(docs/ETCD.md, "ensure, status and stop on etcd"): the instance holds NAME in etcd through its main
process, ``holdfast lock -n --backend URL NAME -- ARGV`` (the holdfast command is
``$HOLDFAST_CLI``, else ``holdfast`` in ``$PATH``), so at most one host runs it.
"""

from __future__ import annotations

import json
import math
import os
import signal as _signal
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import _native
from ._errors import CorruptRecord, DataError, ReadyTimeout


class Instance:
    """The verified, ready instance ensure() returned.

    ``pid``, ``start_time`` (/proc/PID/stat field 22), ``state`` ("ready"), ``ready``, ``started``
    (True if this call spawned it), ``waited`` (seconds spent in ensure()), ``record`` (the
    instance record as a dict, parsed on first access: the warm path does not pay for it).

    With ``backend=``: ``host`` (the host that runs it) and ``token`` (the etcd holder's fencing
    token). If another host runs it, nothing was started here: ``state`` is "elsewhere", ``ready``
    and ``started`` are False (its readiness cannot be verified from here), ``pid`` and
    ``start_time`` are that host's lock process (for information only) and ``record`` is the
    object of ``holdfast ensure --json --backend`` (its etcd record under "record"). Without a
    backend, ``host`` and ``token`` are None.
    """

    __slots__ = ("name", "pid", "start_time", "state", "ready", "started", "waited", "host", "token", "_record_json",
                 "_record")

    def __init__(self, name: str, pid: int, start_time: int, ready: bool, started: bool, waited: float,
                 record_json: str, host: Optional[str] = None, token: Optional[int] = None,
                 elsewhere: bool = False) -> None:
        self.name = name
        self.pid = pid
        self.start_time = start_time
        self.state = "elsewhere" if elsewhere else "ready" if ready else "starting"
        self.ready = ready
        self.started = started
        self.waited = waited
        self.host = host
        self.token = token
        self._record_json = record_json
        self._record: Optional[dict[str, Any]] = None

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = json.loads(self._record_json) if self._record_json else {}
        return self._record

    def __repr__(self) -> str:
        where = "" if self.host is None else f", host={self.host!r}, token={self.token}"
        return (f"Instance(name={self.name!r}, pid={self.pid}, start_time={self.start_time}, state={self.state!r}, "
                f"started={self.started}, waited={self.waited:.6f}{where})")


@dataclass(frozen=True)
class Status:
    """What status() found. ``state``: "ready", "running" (lock held, not ready yet), "stopped",
    "stale" (lock free but the record says it runs: it died without cleanup), or — where the
    library reports it — "unknown" (lock held but the record does not verify).

    With ``backend=``: ``lock_held`` means some host holds NAME in etcd; ``host`` names it (None
    when not running), ``token`` is the holder's fencing token, ``pid`` its lock process on
    ``host``; ``state`` is "ready" only for this host's verified, ready instance of ``state_dir``,
    else "running" or "stopped"; ``record`` is ``holdfast status --json --backend``'s object (the
    etcd record under "record"). Without a backend, ``host``, ``token`` and ``pid`` are None."""

    name: str
    state: str
    lock_held: bool
    reason: str
    record: Optional[dict[str, Any]]
    host: Optional[str] = None
    token: Optional[int] = None
    pid: Optional[int] = None

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


_STATES = {0: "ready", 1: "running", 2: "stopped", 3: "stale"}


def _backend_args(ttl: Optional[float], cacert: Optional[str | os.PathLike[str]],
                  cert: Optional[str | os.PathLike[str]], key: Optional[str | os.PathLike[str]], user: Optional[str],
                  password: Optional[str]) -> _native.BackendArgs:
    """The TTL (seconds; None: 10) and TLS/auth settings of a backend URL, as for ``Lock``."""
    def text(value: Optional[str | os.PathLike[str]]) -> str:
        return "" if value is None else os.fspath(value)

    return _native.BackendArgs(0.0 if ttl is None else float(ttl), text(cacert), text(cert), text(key), text(user),
                               text(password))


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
    backend: Optional[str] = None,
    ttl: Optional[float] = None,
    cacert: Optional[str | os.PathLike[str]] = None,
    cert: Optional[str | os.PathLike[str]] = None,
    key: Optional[str | os.PathLike[str]] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> Instance:
    """Ensures exactly one instance ``name`` runs ``argv`` and is ready; returns it.

    ``ready``: "none", "notify" (sd_notify READY=1), "fd:N" (a newline on fd N), "tcp:HOST:PORT",
    "unix:PATH", "file:PATH". Returns at once if a verified instance is ready; waits if one is
    starting; otherwise starts it. Raises StartFailure if it failed before ready (``exit_status``,
    ``log_tail``), ReadyTimeout if not ready within ``timeout`` seconds (it keeps starting),
    UsageError for a bad name or spec.

    ``backend="etcd://HOST:PORT[,HOST:PORT...]/PREFIX"``: exactly one instance across the machines
    sharing that prefix (``ttl`` seconds of lease, default 10; TLS ``cacert``/``cert``/``key``;
    ``user``/``password``). Starts it here only if no host runs it ("ready" with ``ready="none"``:
    NAME is held in etcd); if another host runs it (or wins the race), starts nothing and returns
    that host's instance (``state`` "elsewhere", ``host``, ``token``). Unavailable (69), Error (76)
    or PermissionDenied (77) when etcd cannot be used; StartFailure (127) without a holdfast
    command (``$HOLDFAST_CLI`` or ``holdfast`` in ``$PATH``).
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of strings, not a string")
    args = list(map(os.fspath, argv))
    if backend is None:
        result = _native.ensure(name, args, ready, _ms(timeout), _dir(state_dir))
    else:
        result = _native.ensure_url(backend, name, args, ready, _ms(timeout), _dir(state_dir),
                                    _backend_args(ttl, cacert, cert, key, user, password))
    if result[0] == _native.TIMEOUT:
        raise ReadyTimeout(result[1], name, 0, 75)
    _, pid, start_time, is_ready, started, waited_ns, record = result
    if backend is None:
        return Instance(name, pid, start_time, is_ready, started, waited_ns / 1e9, record)
    info = json.loads(record)
    return Instance(name, pid, start_time, is_ready, started, waited_ns / 1e9, record, info.get("host"),
                    info.get("token"), not info.get("local", False))


def status(
    name: str,
    *,
    state_dir: Optional[str | os.PathLike[str]] = None,
    backend: Optional[str] = None,
    ttl: Optional[float] = None,
    cacert: Optional[str | os.PathLike[str]] = None,
    cert: Optional[str | os.PathLike[str]] = None,
    key: Optional[str | os.PathLike[str]] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> Status:
    """The status of instance ``name``, judged by its kernel lock (takes no lock). With
    ``backend=`` (and its settings, as for ensure()): who holds NAME in etcd, from one
    linearizable read: ``host``, ``pid`` and ``token`` of the holder."""
    if backend is None:
        _state, text = _native.status(name, _dir(state_dir))
        info = json.loads(text)
        return Status(info["name"], info["state"], info["lock_held"], info["reason"], info["record"])
    state, text = _native.status_url(backend, name, _dir(state_dir), _backend_args(ttl, cacert, cert, key, user, password))
    info = json.loads(text)
    host = info.get("host")
    if host is None:
        return Status(name, "stopped", False, f"no host holds {name} in etcd", info)
    reason = f"held in etcd by host {host} (pid {info.get('pid')}, token {info.get('token')})"
    return Status(name, _STATES.get(state, "unknown"), True, reason, info, host, info.get("token"), info.get("pid"))


def stop(
    name: str,
    *,
    state_dir: Optional[str | os.PathLike[str]] = None,
    signal: int = _signal.SIGTERM,
    timeout: float = 10.0,
    kill_after: Optional[float] = None,
    backend: Optional[str] = None,
    ttl: Optional[float] = None,
    cacert: Optional[str | os.PathLike[str]] = None,
    cert: Optional[str | os.PathLike[str]] = None,
    key: Optional[str | os.PathLike[str]] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> StopResult:
    """Stops the verified instance: signals it only if the recorded identity matches the process
    holding the instance lock, then waits up to ``timeout`` seconds for the lock to be released
    (SIGKILL after ``kill_after`` seconds if given). Returns was_running=False if none runs.
    Raises CorruptRecord if the lock is held but the record does not verify (nothing signalled),
    ReadyTimeout-like Error (exit 75) if it still runs after the timeout.

    With ``backend=`` (and its settings, as for ensure()): not running anywhere, was_running=False;
    run by ANOTHER host: raises DataError (exit 65) naming that host, nothing signalled (stop it
    there); on this host, only the instance of ``state_dir`` that holds NAME in etcd is stopped
    (else DataError); its lock process then releases NAME."""
    if backend is not None:
        try:
            result = _native.stop_url(backend, name, _dir(state_dir), int(signal), _ms(timeout), _ms(kill_after),
                                      _backend_args(ttl, cacert, cert, key, user, password))
        except CorruptRecord as e:  # exit 65 from etcd's stop: not this host's verified holder
            raise DataError(e.cause, e.path, 0, e.exit_code) from None
    else:
        result = _native.stop(name, _dir(state_dir), int(signal), _ms(timeout), _ms(kill_after))
    if result[0] == _native.TIMEOUT:
        from ._errors import Error

        raise Error(result[1], name, 0, 75)
    _, was_running, pid, killed = result
    return StopResult(was_running, pid, killed)
