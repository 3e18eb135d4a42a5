"""holdfast's exceptions.

Every failure is one line naming the path and the cause, as holdfast's command prints it. Failures
of a system call are also ``OSError`` subclasses with ``errno``/``filename`` set, so code written
against the standard library keeps working (``except FileNotFoundError``, ``except OSError``).
"""

from __future__ import annotations

import errno as _errno


class Error(Exception):
    """Base of every holdfast failure.

    Attributes: ``path`` (what the failure concerns, "" if nothing), ``cause`` (the one-line
    message "PATH: CONTEXT: CAUSE"), ``exit_code`` (the holdfast command's exit code for it,
    docs/EXIT_CODES.md) and ``errno`` (0 when the cause is not a system call).
    """

    def __init__(self, message: str, path: str = "", err: int = 0, exit_code: int = 70) -> None:
        if isinstance(self, OSError):
            OSError.__init__(self, err, message, path or None)
        else:
            Exception.__init__(self, message)
        self.cause = message
        self.path = path
        self.exit_code = exit_code
        if not isinstance(self, OSError):
            self.errno = err

    def __str__(self) -> str:
        return self.cause


class OSFailure(Error, OSError):
    """A failed system call (``errno`` set)."""


class NotFound(Error, FileNotFoundError):
    """ENOENT: a missing file or directory (exit code 66)."""


class PermissionDenied(Error, PermissionError):
    """EACCES / EPERM (exit code 77)."""


class UsageError(Error, ValueError):
    """A bad argument: name, backend, readiness spec, algorithm (exit code 64)."""


class DataError(Error):
    """The data forbids the operation; nothing was changed or signalled (exit code 65). E.g.
    ``stop(name, backend=URL)`` of an instance that runs on another host (the message names it)."""


class CorruptRecord(DataError):
    """A record that does not parse or verify; holdfast fails closed (exit code 65)."""


class Unavailable(Error):
    """The primitive is unsupported or unsafe on this filesystem (exit code 69)."""


class Timeout(Error, TimeoutError):
    """The lock could not be acquired in time. Same shape as ``filelock.Timeout``."""

    def __init__(self, lock_file: str) -> None:
        Error.__init__(self, f"The file lock '{lock_file}' could not be acquired.", lock_file, _errno.ETIMEDOUT, 1)
        self.lock_file = lock_file


class ReadyTimeout(Error, TimeoutError):
    """ensure(): the instance was not ready in time (it keeps starting). Exit code 75."""


class WaitTimeout(Error, TimeoutError):
    """wait_like(): the reader's view did not match in time; ``difference`` says what differs."""

    def __init__(self, message: str, path: str, difference: str) -> None:
        Error.__init__(self, message, path, _errno.ETIMEDOUT, 1)
        self.difference = difference


class StartFailure(Error):
    """ensure(): the command failed before it was ready.

    ``exit_status`` is its exit code (or 128+signal; -1 if it never ran); ``log_tail`` the last
    lines of its log.
    """

    def __init__(self, message: str, path: str, err: int, exit_code: int, exit_status: int, log_tail: str) -> None:
        Error.__init__(self, message, path, err, exit_code)
        self.exit_status = exit_status
        self.log_tail = log_tail


class Fenced(Error):
    """write(fence=TOKEN): TOKEN is lower than the highest fencing token the path has accepted —
    a newer lock holder already wrote it; the target is untouched (exit code 79, as
    ``holdfast write --fence``). ``token`` is the refused token."""

    token: int = 0


def _from_native(message: str, path: str, err: int, exit_code: int, exit_status: int, log_tail: str) -> Error:
    """The exception for an error reported by the C API (called by holdfast._native)."""
    if exit_status >= 0 or log_tail or exit_code in (126, 127):
        return StartFailure(message, path, err, exit_code, exit_status, log_tail)
    if err == 0 and exit_code == 66:  # "does not exist", found without a failing syscall
        err = _errno.ENOENT
    elif err == 0 and exit_code == 77:  # refused (e.g. a symlink in a sticky directory)
        err = _errno.EACCES
    if err == _errno.ENOENT:
        return NotFound(message, path, err, exit_code)
    if err in (_errno.EACCES, _errno.EPERM):
        return PermissionDenied(message, path, err, exit_code)
    if err == _errno.EINTR:
        return OSFailure(message, path, err, exit_code)
    if err != 0:
        return OSFailure(message, path, err, exit_code)
    if exit_code == 79:
        return Fenced(message, path, err, exit_code)
    if exit_code == 64:
        return UsageError(message, path, err, exit_code)
    if exit_code == 65:
        return CorruptRecord(message, path, err, exit_code)
    if exit_code == 69:
        return Unavailable(message, path, err, exit_code)
    return Error(message, path, err, exit_code)
