"""write / wait_like / digest: the durable hand-off (docs/DURABLE.md)."""

from __future__ import annotations

import math
import os
from typing import Optional

from . import _native
from ._errors import WaitTimeout


def write(path: str | os.PathLike[str], data: bytes | str, *, sync: bool = True, mode: Optional[int] = None) -> None:
    """Atomically replaces ``path`` with ``data``: readers and crashes see all old or all new
    content; with ``sync`` (default) the new content is on stable storage when this returns. An
    existing file keeps its mode, owner, ACLs and xattrs; ``mode`` applies to a new file only."""
    if isinstance(data, str):
        data = data.encode()
    _native.write(os.fspath(path), bytes(data), sync, -1 if mode is None else int(mode))


def wait_like(
    path: str | os.PathLike[str],
    like: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    interval: float = 0.5,
    via: Optional[str] = None,
) -> None:
    """Waits until the reader's view of ``path`` holds exactly the content of ``like`` (size and
    digest; size alone is never enough). ``via``: a shell command printing the reader's view of
    $1 (e.g. over ssh or mpremote). Raises WaitTimeout (``difference`` says what differs) if not
    matched within ``timeout`` seconds; Ctrl-C interrupts it at the next check."""
    matched, difference = _native.wait_like(
        os.fspath(path), os.fspath(like), -1 if timeout < 0 or math.isinf(timeout) else int(timeout * 1000),
        int(interval * 1000), via or ""
    )
    if not matched:
        raise WaitTimeout(f"{os.fspath(path)}: not like {os.fspath(like)} after {timeout}s: {difference}",
                          os.fspath(path), difference)


def digest(source: str | os.PathLike[str] | bytes, alg: str = "xxh128") -> str:
    """The content digest "ALG:HEX" of a file (a path) or of ``bytes``; ``alg`` "xxh128" (default)
    or "sha256" (HEX is what sha256sum prints)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _native.digest_bytes(bytes(source), alg)
    return _native.digest_file(os.fspath(source), alg)[0]


