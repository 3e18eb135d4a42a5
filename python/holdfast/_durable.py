"""write / wait_like / digest: the durable hand-off (docs/DURABLE.md)."""

from __future__ import annotations

import math
import os
from typing import Optional

from . import _native
from ._errors import Fenced, WaitTimeout


def write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    sync: bool = True,
    mode: Optional[int] = None,
    fence: Optional[int] = None,
) -> None:
    """Atomically replaces ``path`` with ``data``: readers and crashes see all old or all new
    content; with ``sync`` (default) the new content is on stable storage when this returns. An
    existing file keeps its mode, owner, ACLs and xattrs; ``mode`` applies to a new file only.

    ``fence``: a fencing token (``FileLock.token`` of the grant this write is made under), as
    ``holdfast write --fence``: the write happens only if it is >= the highest token ``path`` has
    accepted, else raises ``Fenced`` with ``path`` untouched, so a paused ex-holder cannot
    overwrite what a newer holder wrote. Fenced writers from Python, C and the command serialise
    on the same per-path record (docs/DURABLE.md, "Fenced writes")."""
    if isinstance(data, str):
        data = data.encode()
    if fence is not None and (isinstance(fence, bool) or not isinstance(fence, int) or not 0 <= fence < 2**64):
        raise TypeError(f"fence must be a token from 0 to 2**64-1, not {fence!r}")
    try:
        _native.write(os.fspath(path), bytes(data), sync, -1 if mode is None else int(mode), fence)
    except Fenced as refused:
        refused.token = fence if fence is not None else 0
        raise


def accepted_fence(path: str | os.PathLike[str]) -> int:
    """The highest fencing token ``path`` has accepted from a fenced write (0 if none)."""
    return _native.accepted_fence(os.fspath(path))


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


