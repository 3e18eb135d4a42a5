"""holdfast.Lock on etcd: a real etcd (Debian's /usr/bin/etcd) started by the fixture on free
loopback ports, data in a temp dir, killed and removed afterwards; exclusion against
`holdfast lock --backend etcd://` on the same name, fencing tokens, errors, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import holdfast
from conftest import HANG_TIMEOUT, run_python, wait_until

ETCD = "/usr/bin/etcd"
pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="/usr/bin/etcd not installed (etcd-server)")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    """One etcd member; yields its endpoint HOST:PORT."""
    client, peer = free_ports(2)
    endpoint = f"127.0.0.1:{client}"
    peer_url = f"http://127.0.0.1:{peer}"
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            [ETCD, "--name", "m0", "--data-dir", str(tmp_path / "etcd"),
             "--listen-client-urls", f"http://{endpoint}", "--advertise-client-urls", f"http://{endpoint}",
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"m0={peer_url}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-500:]
            try:
                req = urllib.request.Request(f"http://{endpoint}/v3/kv/range", data=b'{"key":"eA=="}', method="POST")
                with urllib.request.urlopen(req, timeout=2):
                    return True
            except OSError:
                return False

        wait_until(ready, "etcd to answer")
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


def cli() -> str:
    return os.environ.get("HOLDFAST_CLI", "holdfast")


def test_a_lock_on_etcd_excludes_the_command_on_the_same_name_and_back(etcd: str, tmp_path: Path) -> None:
    url = f"etcd://{etcd}/py"
    lock = holdfast.Lock("job", backend=url, ttl=5)
    assert lock.token is None and not lock.is_locked
    with lock:
        token = lock.token
        assert token and token > 0
        assert not lock.lost
        busy = subprocess.run([cli(), "lock", "-n", "--backend", url, "job", "true"], capture_output=True, text=True)
        assert busy.returncode == 1, busy.stderr
    assert not lock.is_locked

    held, done, tok = tmp_path / "held", tmp_path / "done", tmp_path / "token"
    holder = subprocess.Popen(
        [cli(), "lock", "--backend", url, "job", "sh", "-c",
         f"echo $HOLDFAST_TOKEN > {tok}; touch {held}; while [ ! -e {done} ]; do sleep 0.05; done"],
        stdin=subprocess.DEVNULL)
    try:
        wait_until(held.exists, "the command to hold the lock")
        cli_token = int(tok.read_text())
        assert cli_token > token
        with pytest.raises(holdfast.Timeout):
            lock.acquire(timeout=0)
        with pytest.raises(holdfast.Timeout):
            lock.acquire(timeout=0.3)
        done.touch()
        with lock.acquire(timeout=HANG_TIMEOUT):
            assert lock.token is not None and lock.token > cli_token
        assert holder.wait(timeout=HANG_TIMEOUT) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_two_processes_exclude_each_other_and_tokens_increase(etcd: str, tmp_path: Path) -> None:
    url = f"etcd://{etcd}/py"
    code = """
import sys, holdfast
lock = holdfast.Lock("n", backend=sys.argv[1])
for _ in range(int(sys.argv[3])):
    with lock:
        with open(sys.argv[2], "a") as f:
            f.write(f"in {lock.token}\\n"); f.flush()
            f.write(f"out {lock.token}\\n")
"""
    log = tmp_path / "log"
    procs = [run_python(code, url, str(log), "10") for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=HANG_TIMEOUT) == 0
    lines = log.read_text().split()
    pairs = list(zip(lines[0::2], lines[1::2]))
    tokens = []
    for (a, ta), (b, tb) in zip(pairs[0::2], pairs[1::2]):
        assert (a, b) == ("in", "out") and ta == tb  # no interleaving: exclusion
        tokens.append(int(ta))
    assert len(tokens) == 30
    assert tokens == sorted(tokens) and len(set(tokens)) == 30  # strictly increasing in grant order


def test_errors(etcd: str) -> None:
    with pytest.raises(holdfast.UsageError):
        holdfast.Lock("n", backend="etcd://nohostport/x")
    with pytest.raises(holdfast.UsageError):
        holdfast.Lock("n", backend="/not/a/url")
    (port,) = free_ports(1)
    lock = holdfast.Lock("n", backend=f"etcd://127.0.0.1:{port}/x")
    with pytest.raises(holdfast.Unavailable) as e:
        lock.acquire(timeout=0)
    assert "\n" not in str(e.value)
    assert not lock.is_locked


def test_ctrl_c_ends_a_wait(etcd: str, tmp_path: Path) -> None:
    url = f"etcd://{etcd}/py"
    code = """
import sys, holdfast
lock = holdfast.Lock("c", backend=sys.argv[1])
try:
    print("waiting", flush=True)
    lock.acquire()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""
    with holdfast.Lock("c", backend=url):
        p = run_python(code, url, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "waiting"
        time.sleep(0.2)  # most likely in the wait by now; a SIGINT just before it is caught the same way
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=HANG_TIMEOUT) == 3
        assert p.stdout.read().strip() == "interrupted"


def test_holder_names_the_holder_on_any_machine_as_the_command_does(etcd: str, tmp_path: Path) -> None:
    url = f"etcd://{etcd}/py"
    lock = holdfast.Lock("h", backend=url, ttl=5)
    free = lock.holder()
    assert (free.state, free.backend, free.kernel_lock_held, free.record, free.token) == ("free", "etcd", False, None, None)
    assert free.pids == []

    # Another process holds it through the Python API: its pid, host and token, read from etcd.
    code = """
import sys, holdfast
lock = holdfast.Lock("h", backend=sys.argv[1], ttl=5)
with lock:
    print(lock.token, flush=True)
    sys.stdin.readline()
"""
    child = run_python(code, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        token = int(child.stdout.readline())
        info = lock.holder()
        assert (info.state, info.backend, info.kernel_lock_held, info.token) == ("held", "etcd", False, token)
        assert info.pids == [child.pid]
        assert info.record is not None and info.record["backend"] == "etcd"
        assert info.record["processes"][0]["host"] == socket.gethostname()
        assert str(token) in info.reason and "\n" not in info.reason
        # The same answer as `holdfast holder --json --backend` (one implementation).
        import json

        cmd = subprocess.run([cli(), "holder", "--json", "--backend", url, "h"], capture_output=True, text=True)
        assert cmd.returncode == 1, cmd.stderr
        assert json.loads(cmd.stdout)["token"] == token and json.loads(cmd.stdout)["record"] == info.record
        # While held by another: our own acquire is refused, and holder() did not take it.
        with pytest.raises(holdfast.Timeout):
            lock.acquire(timeout=0)
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=HANG_TIMEOUT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert lock.holder().state == "free"
    with lock:
        mine = lock.holder()
        assert mine.state == "held" and mine.pids == [os.getpid()] and mine.token == lock.token


@pytest.mark.skipif(not os.access("/usr/bin/etcdctl", os.X_OK), reason="etcdctl not installed (etcd-client)")
def test_holder_of_an_etcdctl_lock_is_held_without_a_record(etcd: str, tmp_path: Path) -> None:
    held, done = tmp_path / "held", tmp_path / "done"
    proc = subprocess.Popen(
        ["/usr/bin/etcdctl", f"--endpoints={etcd}", "lock", "py/e", "--", "sh", "-c",
         f"touch {held}; while [ ! -e {done} ]; do sleep 0.05; done"],
        stdin=subprocess.DEVNULL, env={**os.environ, "ETCDCTL_API": "3"})
    try:
        def holding() -> bool:
            assert proc.poll() is None, "etcdctl lock exited"
            return held.exists()

        wait_until(holding, "etcdctl to hold the lock")
        info = holdfast.Lock("e", backend=f"etcd://{etcd}/py").holder()
        assert info.state == "held" and info.record is None and info.pids == [] and info.token
        assert "etcdctl" in info.reason
    finally:
        done.touch()
        proc.wait(timeout=HANG_TIMEOUT)


def test_holder_of_an_unreachable_cluster_raises_in_one_line() -> None:
    (port,) = free_ports(1)
    with pytest.raises(holdfast.Unavailable) as e:
        holdfast.Lock("n", backend=f"etcd://127.0.0.1:{port}/x").holder()
    assert "\n" not in str(e.value)
