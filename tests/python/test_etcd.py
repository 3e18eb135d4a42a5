"""holdfast.Lock on etcd: a real etcd (Debian's /usr/bin/etcd) started by the fixture on free
loopback ports, data in a temp dir, killed and removed afterwards; exclusion against
`holdfast lock --backend etcd://` on the same name, fencing tokens, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import holdfast
from conftest import HANG_TIMEOUT, child_env, run_python, wait_until

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


# ---- ensure / status / stop on etcd: one instance across machines (docs/ETCD.md) ----
# Another "machine" is a child in its own UTS namespace with another hostname (`unshare -u`), with
# its own state directory, as in tests/etcd.

# A client on some host: waits at the barrier (EOF on a pipe shared by every client), calls
# holdfast.ensure on etcd and prints what it got as one JSON line.
ENSURE_CLIENT = r"""
import json, os, sys, holdfast
url, state_dir, count_file, gun = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
os.read(gun, 1)
inst = holdfast.ensure("svc", ["sh", "-c", f'echo $$ >> {count_file}; exec sleep 100000'], backend=url, ttl=5,
                       state_dir=state_dir, timeout=120)
print(json.dumps({"host": inst.host, "token": inst.token, "pid": inst.pid, "started": inst.started,
                  "state": inst.state}), flush=True)
"""

# On another host: ensure, status and stop of NAME, each reported as one JSON line.
OTHER_HOST_CLIENT = r"""
import json, sys, holdfast
url, state_dir = sys.argv[1], sys.argv[2]
inst = holdfast.ensure("svc", ["sleep", "100000"], backend=url, state_dir=state_dir)
st = holdfast.status("svc", backend=url, state_dir=state_dir)
try:
    holdfast.stop("svc", backend=url, state_dir=state_dir)
    stop = "stopped"
except holdfast.DataError as e:
    stop = {"type": type(e).__name__, "message": str(e), "exit_code": e.exit_code}
print(json.dumps({"state": inst.state, "host": inst.host, "token": inst.token, "pid": inst.pid,
                  "started": inst.started, "status": [st.state, st.host, st.pid, st.token], "stop": stop}))
"""


def on_host(hostname: str | None, code: str, *args: str, **kwargs) -> subprocess.Popen:
    """/usr/bin/python3 running `code` on this host (None) or on "machine" `hostname`."""
    if hostname is None:
        return run_python(code, *args, **kwargs)
    return subprocess.Popen(["unshare", "-u", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", sys.executable,
                             "-c", code, *args], env=child_env(), **kwargs)


@pytest.fixture
def stop_everywhere(etcd: str) -> Iterator[list[tuple[str | None, str]]]:
    """(hostname or None, state_dir) pairs whose instance of "svc" is stopped after the test."""
    where: list[tuple[str | None, str]] = []
    yield where
    code = "import sys, holdfast; holdfast.stop('svc', backend=sys.argv[1], state_dir=sys.argv[2], kill_after=1)"
    for hostname, state_dir in where:
        p = on_host(hostname, code, f"etcd://{etcd}/py", state_dir, stderr=subprocess.DEVNULL)
        p.wait(timeout=HANG_TIMEOUT)


def test_ensure_on_etcd_starts_one_instance_status_names_it_and_stop_stops_it(
        etcd: str, tmp_path: Path, stop_everywhere: list[tuple[str | None, str]]) -> None:
    url = f"etcd://{etcd}/py"
    state = str(tmp_path / "state")
    os.mkdir(state)
    stop_everywhere.append((None, state))
    before = holdfast.status("svc", backend=url, state_dir=state)
    assert (before.state, before.lock_held, before.host, before.token) == ("stopped", False, None, None)

    first = holdfast.ensure("svc", ["sleep", "100000"], backend=url, ttl=5, state_dir=state)
    assert first.started and first.ready and first.state == "ready"
    assert first.host == socket.gethostname()
    assert first.token is not None and first.token > 0
    again = holdfast.ensure("svc", ["sleep", "100000"], backend=url, ttl=5, state_dir=state)
    assert not again.started
    assert (again.pid, again.start_time, again.token) == (first.pid, first.start_time, first.token)

    st = holdfast.status("svc", backend=url, state_dir=state)
    assert (st.state, st.lock_held, st.host, st.pid, st.token) == ("ready", True, first.host, first.pid, first.token)
    assert st.running

    result = holdfast.stop("svc", backend=url, state_dir=state, kill_after=5)
    assert result.was_running and result.pid == first.pid
    after = holdfast.status("svc", backend=url, state_dir=state)
    assert (after.state, after.lock_held, after.host) == ("stopped", False, None)
    assert not holdfast.stop("svc", backend=url, state_dir=state).was_running


def test_another_host_gets_this_hosts_instance_and_its_stop_raises_data_error(
        etcd: str, tmp_path: Path, stop_everywhere: list[tuple[str | None, str]]) -> None:
    url = f"etcd://{etcd}/py"
    state, other_state = str(tmp_path / "state"), str(tmp_path / "other")
    os.mkdir(state)
    os.mkdir(other_state)
    stop_everywhere.extend([(None, state), ("other-host", other_state)])
    here = holdfast.ensure("svc", ["sleep", "100000"], backend=url, ttl=5, state_dir=state)
    assert here.started

    child = on_host("other-host", OTHER_HOST_CLIENT, url, other_state, stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=HANG_TIMEOUT)
    assert child.returncode == 0
    seen = json.loads(out)
    # ensure there started nothing and got this host's instance; status there names this host.
    assert seen["state"] == "elsewhere" and not seen["started"]
    assert (seen["host"], seen["pid"], seen["token"]) == (here.host, here.pid, here.token)
    assert seen["status"] == ["running", here.host, here.pid, here.token]
    # stop there: DataError naming this host (exit 65), and nothing was signalled.
    assert seen["stop"]["type"] == "DataError" and seen["stop"]["exit_code"] == 65
    assert here.host in seen["stop"]["message"]
    still = holdfast.status("svc", backend=url, state_dir=state)
    assert (still.state, still.pid, still.token) == ("ready", here.pid, here.token)
    os.kill(here.pid, 0)
    assert not holdfast.status("svc", state_dir=other_state).lock_held  # nothing local there


def test_concurrent_ensures_on_several_hosts_start_exactly_one_instance(
        etcd: str, tmp_path: Path, stop_everywhere: list[tuple[str | None, str]]) -> None:
    url = f"etcd://{etcd}/py"
    count = tmp_path / "starts"
    # Two clients on this host (one state directory), one on each of two other hosts.
    hosts: list[tuple[str | None, str]] = [(None, "here"), (None, "here"), ("host-a", "a"), ("host-b", "b")]
    for hostname, d in hosts:
        os.makedirs(tmp_path / d, exist_ok=True)
    stop_everywhere.extend({(h, str(tmp_path / d)) for h, d in hosts})
    gun_r, gun_w = os.pipe()
    clients = []
    try:
        for hostname, d in hosts:
            clients.append(on_host(hostname, ENSURE_CLIENT, url, str(tmp_path / d), str(count), str(gun_r),
                                   stdout=subprocess.PIPE, text=True, pass_fds=(gun_r,)))
        for c in clients:
            assert c.stdout is not None and c.stdout.readline() == "ready\n"
    finally:
        os.close(gun_w)  # releases every client at once
        os.close(gun_r)
    results = []
    for c in clients:
        out, _ = c.communicate(timeout=HANG_TIMEOUT)
        assert c.returncode == 0
        results.append(json.loads(out))
    # One instance: one start, every client given the same holder (host, lock process, token).
    assert sum(r["started"] for r in results) == 1, results
    assert len({(r["host"], r["pid"], r["token"]) for r in results}) == 1, results
    winner = next(r for r in results if r["started"])
    for (hostname, _), r in zip(hosts, results):
        on_winner = (hostname or socket.gethostname()) == winner["host"]
        assert r["state"] == ("ready" if on_winner else "elsewhere"), (hostname, r)
    wait_until(lambda: count.exists() and count.read_text().strip() != "", "the instance's command to run")
    assert len(count.read_text().split()) == 1
    st = holdfast.status("svc", backend=url)
    assert (st.host, st.pid, st.token) == (winner["host"], winner["pid"], winner["token"])


def test_ensure_status_stop_on_an_unreachable_cluster_raise_unavailable_and_start_nothing(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"etcd://127.0.0.1:{port}/py"
    state = str(tmp_path / "state")
    os.mkdir(state)
    for call in (lambda: holdfast.ensure("svc", ["sleep", "100000"], backend=url, state_dir=state),
                 lambda: holdfast.status("svc", backend=url, state_dir=state),
                 lambda: holdfast.stop("svc", backend=url, state_dir=state)):
        with pytest.raises(holdfast.Unavailable) as e:
            call()
        assert e.value.exit_code == 69 and "\n" not in str(e.value)
    assert not holdfast.status("svc", state_dir=state).lock_held
    with pytest.raises(holdfast.UsageError):
        holdfast.status("svc", backend="etcd://nohostport/x")
