#!/usr/bin/env bash
# Supervise: restart latency after the child's death beyond the configured backoff, the
# supervisor's RSS, and its wake-ups when idle (context switches over a window), with and without
# a periodic check. Prints the rows recorded in the "## Supervise" section of docs/PERFORMANCE.md.
set -euo pipefail
: "${HOLDFAST:?set HOLDFAST (bench/run does)}"
ROUNDS=${ROUNDS:-50}
IDLE_SECONDS=${IDLE_SECONDS:-20}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$HOLDFAST" "$ROUNDS" "$IDLE_SECONDS" <<'PY'
import json, os, signal, subprocess, sys, tempfile, time
hf, rounds, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tmp = tempfile.mkdtemp(prefix="holdfast-supervise-bench.")
state = os.path.join(tmp, "state")

def record(name):
    try:
        with open(os.path.join(state, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def ready(name, other_than=None):
    while True:
        r = record(name)
        if r and r["state"] == "ready" and r["pid"] > 0 and r["pid"] != other_than:
            return r
        time.sleep(0.0005)

def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out

def supervise(name, *flags):
    return subprocess.Popen([hf, "supervise", "--state-dir", state, *flags, name, "--", "sleep", "100000"],
                            stderr=subprocess.DEVNULL)

# 1. restart latency: SIGKILL the child, then the supervisor's fork of the next one (the record's
#    spawned_unix_ns, taken right before fork), minus the 1 ms backoff.
sup = supervise("lat", "--backoff", "1ms..1ms", "--burst", "1000000/1s")
r = ready("lat")
lat = []
for _ in range(rounds):
    t0 = time.time_ns()
    os.kill(r["pid"], signal.SIGKILL)
    r2 = ready("lat", r["pid"])
    lat.append((r2["spawned_unix_ns"] - t0) / 1e6 - 1.0)
    r = r2
lat.sort()
rss = int(proc_status(sup.pid)["VmRSS"].split()[0])
subprocess.run([hf, "stop", "lat", "--state-dir", state], stderr=subprocess.DEVNULL)
sup.wait()

# 2. idle wake-ups: context switches of the supervisor over a window, child running, ready.
def wakeups(name, *flags):
    s = supervise(name, *flags)
    ready(name)
    time.sleep(0.5)
    def switches():
        st = proc_status(s.pid)
        return int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
    a = switches()
    time.sleep(idle)
    b = switches()
    subprocess.run([hf, "stop", name, "--state-dir", state], stderr=subprocess.DEVNULL)
    s.wait()
    return (b - a) * 60.0 / idle

quiet = wakeups("quiet")
checked = wakeups("checked", "--check", "true", "--check-every", "1s")
print("| restart latency beyond the backoff (SIGKILL -> next fork), median | %.2f ms | p90 %.2f ms, max %.2f ms, %d rounds (goal <= 5 ms) |"
      % (lat[len(lat) // 2], lat[int(len(lat) * 0.9)], lat[-1], rounds))
print("| supervisor RSS | %d KiB | VmRSS of `holdfast supervise` with its child running |" % rss)
print("| wake-ups per minute, idle, no checks | %.1f | context switches over %g s (goal 0) |" % (quiet, idle))
print("| wake-ups per minute, idle, --check true --check-every 1s | %.1f | the configured checks only (60 checks + their SIGCHLDs) |" % checked)
subprocess.run(["rm", "-rf", tmp])
PY
