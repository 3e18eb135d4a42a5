"""holdfast: correct cross-process coordination through the filesystem, from Python.

- ``FileLock`` / ``SoftFileLock`` / ``AsyncFileLock``: drop-ins for python filelock, interoperating
  with filelock and flock(1) on the same files, plus fencing tokens and ``holder()``.
- ``Lock(name, backend="etcd://HOST:PORT/PREFIX")``: the same API on etcd, across machines,
  excluding ``holdfast lock --backend`` and ``etcdctl lock`` on the same name.
- ``ensure`` / ``status`` / ``stop``: exactly one instance of a daemon, verified by a kernel lock;
  with ``backend="etcd://..."``, exactly one across machines.
- ``write`` / ``wait_like`` / ``digest``: atomic, durable hand-off of files.

Built on holdfast's C API (holdfast.h); see docs/PYTHON.md.
"""

from ._durable import accepted_fence, digest, wait_like, write
from ._ensure import Instance, Status, StopResult, ensure, status, stop
from ._errors import (
    CorruptRecord,
    DataError,
    Error,
    Fenced,
    NotFound,
    OSFailure,
    PermissionDenied,
    ReadyTimeout,
    StartFailure,
    Timeout,
    Unavailable,
    UsageError,
    WaitTimeout,
)
from ._filelock import (
    AcquireReturnProxy,
    AsyncAcquireReturnProxy,
    AsyncFileLock,
    AsyncSoftFileLock,
    BaseFileLock,
    FileLock,
    HolderInfo,
    Lock,
    SoftFileLock,
    UnixFileLock,
    holder,
)

__version__ = "0.1.0"

__all__ = [
    "AcquireReturnProxy", "AsyncAcquireReturnProxy", "AsyncFileLock", "AsyncSoftFileLock", "BaseFileLock",
    "CorruptRecord", "DataError", "Error", "Fenced", "FileLock", "HolderInfo", "Instance", "Lock", "NotFound", "OSFailure", "PermissionDenied",
    "ReadyTimeout", "SoftFileLock", "StartFailure", "Status", "StopResult", "Timeout", "UnixFileLock",
    "Unavailable", "UsageError", "WaitTimeout", "digest", "ensure", "holder", "status", "stop", "wait_like",
    "write", "accepted_fence",
]
