"""Python-side figures for docs/PERFORMANCE.md ("## Python"), each beside its baseline in the same
run: holdfast.FileLock acquire+release vs python filelock's FileLock vs the raw fcntl.flock pair;
warm holdfast.ensure vs reading a pid file and checking /proc (what build tools do today).

Runs are pairwise-interleaved (order alternating per round); each figure is the median over rounds
of the per-operation time, each ratio the median of per-round ratios. Run by bench/60-python.sh."""

from __future__ import annotations

import fcntl
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import filelock

import holdfast

ROUNDS = int(os.environ.get("HOLDFAST_PY_BENCH_ROUNDS", "15"))
OPS = int(os.environ.get("HOLDFAST_PY_BENCH_OPS", "2000"))


def per_op(fn: Callable[[], None], ops: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(ops):
        fn()
    return (time.perf_counter_ns() - start) / ops / 1000.0  # microseconds


def compare(variants: dict[str, Callable[[], None]], ops: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for fn in variants.values():  # warm-up
        per_op(fn, max(1, ops // 10))
    for r in range(ROUNDS):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            times[name].append(per_op(variants[name], ops))
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def main() -> None:
    work = tempfile.mkdtemp(prefix="holdfast-py-bench.", dir=os.environ.get("HOLDFAST_BENCH_DIR"))
    path = os.path.join(work, "bench.lock")

    hf = holdfast.FileLock(path)
    fl = filelock.FileLock(path + ".fl")
    raw_fd = os.open(path + ".raw", os.O_RDWR | os.O_CREAT, 0o644)

    native = holdfast._native.LockFile(path + ".native", holdfast._native.BACKEND_FLOCK, 0)

    def native_pair() -> None:  # the C API through the binding, without the Python class
        native.hold(0)
        native.unhold()

    def hf_pair() -> None:
        hf.acquire()
        hf.release()

    def fl_pair() -> None:
        fl.acquire()
        fl.release()

    def raw_pair() -> None:
        fcntl.flock(raw_fd, fcntl.LOCK_EX)
        fcntl.flock(raw_fd, fcntl.LOCK_UN)

    def raw_open_pair() -> None:
        fd = os.open(path + ".raw2", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    locks = compare({"holdfast": hf_pair, "native": native_pair, "filelock": fl_pair, "flock": raw_pair,
                     "open+flock": raw_open_pair}, OPS)

    state = os.path.join(work, "state")
    argv = ["sleep", "3600"]
    instance = holdfast.ensure("bench", argv, state_dir=state)
    pidfile = os.path.join(work, "daemon.pid")
    with open(pidfile, "w") as f:
        f.write(f"{instance.pid}\n")

    def hf_ensure() -> None:
        holdfast.ensure("bench", argv, state_dir=state)

    def pid_check() -> None:
        with open(pidfile) as f:
            pid = int(f.read())
        os.stat(f"/proc/{pid}")  # "is it running?" as pid-file tools ask it (fooled by pid reuse)

    try:
        ensure = compare({"ensure": hf_ensure, "pidfile": pid_check}, max(1, OPS // 4))
    finally:
        holdfast.stop("bench", state_dir=state)

    med = {k: statistics.median(v) for k, v in {**locks, **ensure}.items()}
    print(f"python {sys.version.split()[0]}, holdfast {holdfast.__version__}, filelock {filelock.__version__}; "
          f"{ROUNDS} interleaved rounds x {OPS} ops; dir {work}; load {open('/proc/loadavg').read().split()[:3]}")
    print("| what | holdfast | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| FileLock acquire+release vs filelock.FileLock | {med['holdfast']:.2f} µs | {med['filelock']:.2f} µs "
          f"| **{ratio(locks, 'holdfast', 'filelock'):.2f}** |")
    print(f"| FileLock acquire+release vs raw fcntl.flock pair (fd kept open) | {med['holdfast']:.2f} µs | "
          f"{med['flock']:.2f} µs | {ratio(locks, 'holdfast', 'flock'):.2f} |")
    print(f"| FileLock acquire+release vs os.open+flock pair+close | {med['holdfast']:.2f} µs | "
          f"{med['open+flock']:.2f} µs | {ratio(locks, 'holdfast', 'open+flock'):.2f} |")
    print(f"| (breakdown) C API grant+release through the binding, no Python class | {med['native']:.2f} µs | "
          f"{med['filelock']:.2f} µs | {ratio(locks, 'native', 'filelock'):.2f} |")
    print(f"| warm holdfast.ensure vs read pid file + stat /proc/PID | {med['ensure']:.2f} µs | "
          f"{med['pidfile']:.2f} µs | {ratio(ensure, 'ensure', 'pidfile'):.2f} |")
    os.close(raw_fd)


if __name__ == "__main__":
    main()
