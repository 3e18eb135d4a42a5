#!/usr/bin/env bash
# The etcd lock, all in this one run, on an etcd this script starts (Debian's /usr/bin/etcd, one
# member on free loopback ports, data in a temp dir; stopped and removed on every exit path):
#   1. uncontended acquire+release through the library vs two bare etcd transactions over one
#      connection (and vs the library's four requests sent bare), Google Benchmark;
#   2. 8 processes contending with zero hold time: handoff wait from a release to the next grant;
#   3. `holdfast lock --backend etcd://…` vs `etcdctl lock` per invocation (hyperfine, or a loop);
#   4. SIGKILL of a holder -> next grant, and a lease loss (holder SIGSTOPped past its TTL) -> its
#      command stopped.
#
#   bash bench/80-etcd.sh            (or `make bench`, which runs every bench/NN-*.sh)
#
# Environment: BUILD_DIR (default ./build), HOLDFAST (default $BUILD_DIR/holdfast), ETCD_BENCH
# (default $BUILD_DIR/bench/holdfast_etcd_bench), ETCD_BENCH_PROCS (8), ETCD_BENCH_SECONDS (5 per
# contended run), ETCD_BENCH_QUICK=1 (shorter runs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD_DIR=${BUILD_DIR:-$(cd "$here/.." && pwd)/build}
HOLDFAST=${HOLDFAST:-$BUILD_DIR/holdfast}
ETCD_BENCH=${ETCD_BENCH:-$BUILD_DIR/bench/holdfast_etcd_bench}
PROCS=${ETCD_BENCH_PROCS:-8}
SECONDS_PER_RUN=${ETCD_BENCH_SECONDS:-5}
PY=/usr/bin/python3
if [ ! -x /usr/bin/etcd ] || [ ! -x /usr/bin/etcdctl ]; then
  echo "80-etcd.sh: skipped: /usr/bin/etcd or /usr/bin/etcdctl not installed (deps: etcd-server, etcd-client)"
  exit 0
fi
[ -x "$ETCD_BENCH" ] || { echo "80-etcd.sh: $ETCD_BENCH not built (make build, or set BUILD_DIR)" >&2; exit 1; }
[ -x "$HOLDFAST" ] || { echo "80-etcd.sh: $HOLDFAST not built" >&2; exit 1; }

work=$(mktemp -d)
etcd_pid=
cleanup() {
  if [ -n "$etcd_pid" ]; then
    kill -CONT "$etcd_pid" 2>/dev/null || true
    kill -KILL "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
export HOLDFAST_STATE_DIR=$work/state
if [ "${ETCD_BENCH_QUICK:-0}" = 1 ]; then reps=2 min_time=0.2 SECONDS_PER_RUN=1 runs=10; else reps=5 min_time=1 runs=60; fi

read -r client_port peer_port < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
endpoint=127.0.0.1:$client_port
/usr/bin/etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://$endpoint" --advertise-client-urls "http://$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "bench=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 600); do
  ETCDCTL_API=3 etcdctl --endpoints="$endpoint" --dial-timeout=1s endpoint health >/dev/null 2>&1 && break
  kill -0 "$etcd_pid" 2>/dev/null || { echo "80-etcd.sh: etcd died: $(tail -1 "$work/etcd.log")" >&2; exit 1; }
  sleep 0.1
done
export HOLDFAST_ETCD_BENCH_URL=etcd://$endpoint/bench
export ETCDCTL_API=3

echo "machine: $(uname -sr), $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
echo "etcd: $(/usr/bin/etcd --version | head -1), data in $(df --output=fstype "$work" | tail -1) under $work"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "uncontended (Google Benchmark, $reps interleaved repetitions)..." >&2
"$ETCD_BENCH" --benchmark_repetitions="$reps" --benchmark_min_time="$min_time" \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
  --benchmark_format=json --benchmark_out="$work/gbench.json" --benchmark_out_format=json >/dev/null

echo "contended: $PROCS processes, ${SECONDS_PER_RUN}s per run, three rounds..." >&2
: >"$work/contended.jsonl"
for round in 1 2 3; do
  "$ETCD_BENCH" contended "$PROCS" "$SECONDS_PER_RUN" >>"$work/contended.jsonl"
done

echo "per invocation ($runs runs each)..." >&2
hf_cmds=("$HOLDFAST lock --backend etcd://$endpoint/bench n /bin/true"
         "etcdctl --endpoints=$endpoint lock bench/n /bin/true")
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/hf.json" "${hf_cmds[@]}" >/dev/null 2>&1
else
  "$PY" - "$work/hf.json" "$runs" "${hf_cmds[@]}" <<'PYEOF'
import json, shlex, subprocess, sys, time
out, runs, cmds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res = []
for c in cmds:
    t = []
    for _ in range(runs):
        s = time.perf_counter(); subprocess.run(shlex.split(c), check=True); t.append(time.perf_counter() - s)
    m = sum(t) / len(t)
    res.append({"command": c, "mean": m, "stddev": (sum((x - m) ** 2 for x in t) / len(t)) ** .5, "user": 0, "system": 0})
json.dump({"results": res}, open(out, "w"))
PYEOF
fi

echo "SIGKILL -> next grant, lease loss -> command stopped (--ttl 2s, 3 rounds each)..." >&2
"$PY" - "$HOLDFAST" "etcd://$endpoint/bench" "$work" >"$work/faults.json" <<'PYEOF'
import json, os, signal, subprocess, sys, time
hf, url, work = sys.argv[1:4]
def lock(name, *cmd, **kw):
    return subprocess.Popen([hf, "lock", "--backend", url, "--ttl", "2s", name, *cmd], **kw)
def wait_file(path, proc):
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise SystemExit(f"holder exited early ({proc.returncode})")
        time.sleep(0.005)
kill_to_grant, loss_to_stop = [], []
for r in range(3):
    held = os.path.join(work, f"held{r}"); got = os.path.join(work, f"got{r}")
    holder = lock(f"kill{r}", "sh", "-c", f"echo $$ > {held}.pid; touch {held}; exec sleep 1000")
    wait_file(held, holder)
    command = int(open(held + ".pid").read())
    waiter = lock(f"kill{r}", "sh", "-c", f"touch {got}")
    time.sleep(0.5)  # the waiter is queued and watching (no grant can happen before the kill anyway)
    t0 = time.monotonic(); holder.send_signal(signal.SIGKILL); holder.wait()
    wait_file(got, waiter)
    kill_to_grant.append(time.monotonic() - t0)
    waiter.wait()
    try:
        os.kill(command, signal.SIGKILL)  # the killed holder's command, if it outlived it
    except ProcessLookupError:
        pass
for r in range(3):
    held = os.path.join(work, f"lheld{r}")
    holder = lock(f"loss{r}", "sh", "-c", f"touch {held}; exec sleep 1000")
    wait_file(held, holder)
    holder.send_signal(signal.SIGSTOP); time.sleep(3.0)
    t0 = time.monotonic(); holder.send_signal(signal.SIGCONT)
    rc = holder.wait()
    loss_to_stop.append((time.monotonic() - t0, rc))
print(json.dumps({"kill_to_grant_s": kill_to_grant, "loss_to_stop": loss_to_stop}))
PYEOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

PYTHONPATH="$(dirname "$0")" "$PY" - "$work" <<'PYEOF'
import json, os, sys
import gbench
work = sys.argv[1]
med = gbench.times_by_arg(os.path.join(work, "gbench.json"))
print()
print("Uncontended acquire+release, ms wall (median of the repetitions; CPU time of this process in brackets):")
print()
print("| variant | ms | / two bare txns |")
print("|---|---:|---:|")
base = med["two_txn"][0]
for v, label in (("two_txn", "two bare transactions, one connection (baseline)"),
                 ("four_req", "lease grant + the two transactions + revoke, bare"),
                 ("library", "EtcdLock::acquire + release (library, as the CLI)"),
                 ("session", "EtcdLock::acquire(EtcdSession&) + release (lease kept across grants)")):
    print(f"| {label} | {med[v][0]:.2f} ({med[v][1]:.2f}) | {med[v][0] / base:.2f}x |")
runs = [json.loads(l) for l in open(os.path.join(work, "contended.jsonl"))]
print()
print("Contended, zero hold time; wait = a holder's release() call -> the next holder's acquire() return (other process):")
print()
print("| round | procs | grants | grants/s | overlaps | wait p50 | wait p99 | wait max |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for i, j in enumerate(runs, 1):
    print(f"| {i} | {j['procs']} | {j['grants']} | {j['grants_per_s']:.1f} | {j['overlaps']} | "
          f"{j['wait_p50_ns'] / 1e6:.2f} ms | {j['wait_p99_ns'] / 1e6:.2f} ms | {j['wait_max_ns'] / 1e6:.2f} ms |")
hf = json.load(open(os.path.join(work, "hf.json")))["results"]
print()
print("Per invocation:")
print()
print("| command | mean | user+sys CPU |")
print("|---|---:|---:|")
for r in hf:
    name = "holdfast lock --backend etcd://…" if "holdfast" in r["command"].split()[0] else "etcdctl lock"
    print(f"| `{name}` | {r['mean'] * 1e3:.1f} ms ± {r['stddev'] * 1e3:.1f} | {(r['user'] + r['system']) * 1e3:.1f} ms |")
print(f"| ratio | {hf[0]['mean'] / hf[1]['mean']:.2f}x | |")
f = json.load(open(os.path.join(work, "faults.json")))
print()
print("| event (--ttl 2s) | measured |")
print("|---|---:|")
print("| SIGKILL of the holder -> waiter granted | " + ", ".join(f"{x:.2f} s" for x in f["kill_to_grant_s"]) + " |")
print("| holder SIGSTOPped 3 s, SIGCONT -> its command stopped | " +
      ", ".join(f"{t * 1e3:.0f} ms (exit {rc})" for t, rc in f["loss_to_stop"]) + " |")
PYEOF
