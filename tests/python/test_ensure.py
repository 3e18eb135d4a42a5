"""holdfast.ensure / status / stop from Python, in the shape of a build tool's own race
reproduction (`--reproduce --workers 20`): 20 processes call ensure at the same instant; exactly
one daemon must start. And a stale record naming a recycled pid never fools holdfast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import holdfast
from conftest import HANG_TIMEOUT, SOAK, child_env, run_python

# The daemon: counts its starts, says ready with a newline on fd 5, then waits for a signal.
DAEMON = r"""
import os, signal, sys
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\n")
os.write(5, b"\n")
os.close(5)
signal.pause()
"""

# One client: says it is ready (imports done), waits at the barrier (EOF on a pipe shared by all
# clients, so every one is released by the same close), then ensures the daemon and reports.
CLIENT = r"""
import json, os, sys, holdfast
state_dir, count_file, gun = sys.argv[1], sys.argv[2], int(sys.argv[4])
print("ready", flush=True)
os.read(gun, 1)
instance = holdfast.ensure("daemon", [sys.executable, "-c", sys.argv[3], count_file],
                           ready="fd:5", timeout=120, state_dir=state_dir)
print(json.dumps({"pid": instance.pid, "started": instance.started, "ready": instance.ready,
                  "state": instance.state}), flush=True)
"""

WORKERS = 20
ROUNDS = 50 if SOAK else 3


def daemon_argv(count_file: Path) -> list[str]:
    return [sys.executable, "-c", DAEMON, str(count_file)]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_twenty_clients_at_once_start_exactly_one_daemon(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    count_file = tmp_path / "starts"
    for round_no in range(ROUNDS):
        gun_read, gun_write = os.pipe()
        try:
            clients = [
                run_python(CLIENT, str(state_dir), str(count_file), DAEMON, str(gun_read),
                           stdout=subprocess.PIPE, text=True, pass_fds=(gun_read,))
                for _ in range(WORKERS)
            ]
            for c in clients:  # every client has imported holdfast and is at the barrier
                assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        finally:
            os.close(gun_read)
            os.close(gun_write)  # fire: all clients see EOF at once
        reports = []
        for c in clients:
            out, _ = c.communicate(timeout=HANG_TIMEOUT * 2)
            assert c.returncode == 0, out
            reports.append(json.loads(out))
        pids = {r["pid"] for r in reports}
        starts = count_file.read_text().split()
        assert len(pids) == 1, f"round {round_no}: clients saw different daemons {pids}"
        assert sum(r["started"] for r in reports) == 1, f"round {round_no}: {reports}"
        assert len(starts) == round_no + 1, f"round {round_no}: daemon started {starts}"
        assert all(r["ready"] and r["state"] == "ready" for r in reports)
        (pid,) = pids
        assert int(starts[-1]) == pid
        result = holdfast.stop("daemon", state_dir=state_dir, timeout=HANG_TIMEOUT)
        assert result.was_running and result.pid == pid
        assert not pid_alive(pid)
        # Not running. The library marks the record "stopped" only when the spawn lock is free at
        # that moment; the launcher of a fresh start may still hold it, leaving "stale".
        assert not holdfast.status("daemon", state_dir=state_dir).running


def start_time_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22


def test_stale_record_naming_a_live_unrelated_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    count_file = tmp_path / "starts"
    first = holdfast.ensure("daemon", daemon_argv(count_file), ready="fd:5", state_dir=state_dir)
    assert first.started
    holdfast.stop("daemon", state_dir=state_dir)
    # The pid is reused: the record now names another live process, with its real start time
    # (the worst case: even pid + start time match; only the kernel lock says it is not ours).
    other = subprocess.Popen(["sleep", "600"])
    try:
        record_path = state_dir / "daemon.json"
        record = json.loads(record_path.read_text())
        record.update(pid=other.pid, start_time=start_time_of(other.pid), state="ready")
        record_path.write_text(json.dumps(record))

        # What the build tool's check concludes (psutil.pid_exists / kill(pid, 0)): "running".
        assert os.path.exists(f"/proc/{record['pid']}")
        # holdfast asks the kernel lock instead:
        status = holdfast.status("daemon", state_dir=state_dir)
        assert status.state == "stale" and not status.lock_held and not status.running

        result = holdfast.stop("daemon", state_dir=state_dir, timeout=5)
        assert not result.was_running and result.pid == 0
        assert other.poll() is None, "stop signalled a process it had not verified"

        second = holdfast.ensure("daemon", daemon_argv(count_file), ready="fd:5", state_dir=state_dir)
        assert second.started and second.pid != other.pid
        assert other.poll() is None
        holdfast.stop("daemon", state_dir=state_dir)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_start_failure_carries_exit_status_and_log(tmp_path: Path) -> None:
    with pytest.raises(holdfast.StartFailure) as caught:
        holdfast.ensure("bad", ["sh", "-c", "echo it broke >&2; exit 3"], ready="fd:5",
                        timeout=HANG_TIMEOUT, state_dir=tmp_path)
    assert caught.value.exit_status == 3
    assert "it broke" in caught.value.log_tail
    assert "bad" in str(caught.value)


def test_ready_timeout_is_a_timeout_error(tmp_path: Path) -> None:
    with pytest.raises(holdfast.ReadyTimeout) as caught:
        holdfast.ensure("slow", ["sleep", "600"], ready="fd:5", timeout=0.3, state_dir=tmp_path)
    assert isinstance(caught.value, TimeoutError)
    holdfast.stop("slow", state_dir=tmp_path, timeout=HANG_TIMEOUT)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(holdfast.UsageError):
        holdfast.ensure("no spaces allowed", ["true"], state_dir=tmp_path)
    with pytest.raises(holdfast.UsageError):
        holdfast.ensure("x", ["true"], ready="carrier-pigeon", state_dir=tmp_path)
    with pytest.raises(TypeError):
        holdfast.ensure("x", "true", state_dir=tmp_path)  # type: ignore[arg-type]
    assert holdfast.status("never-started", state_dir=tmp_path).state == "stopped"
    assert not holdfast.stop("never-started", state_dir=tmp_path).was_running
