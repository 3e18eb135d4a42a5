#!/usr/bin/env bash
# The shm backend against pthread mutexes in a shared mapping, all in this one run: uncontended
# acquire+release (wall clock, and instructions under callgrind, which do not depend on load), and
# 8 processes contending with zero hold time (grants/s, cross-process handoffs/s, waits).
#
#   bash bench/70-shm.sh            (or `make bench`, which runs every bench/NN-*.sh)
#
# Environment: BUILD_DIR (default ./build), SHM_BENCH (default $BUILD_DIR/bench/holdfast_shm_bench),
# SHM_BENCH_PROCS (8), SHM_BENCH_SECONDS (2 per contended run), SHM_BENCH_QUICK=1 (shorter runs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD_DIR=${BUILD_DIR:-$(cd "$here/.." && pwd)/build}
SHM_BENCH=${SHM_BENCH:-$BUILD_DIR/bench/holdfast_shm_bench}
PROCS=${SHM_BENCH_PROCS:-8}
SECONDS_PER_RUN=${SHM_BENCH_SECONDS:-2}
PY=/usr/bin/python3
[ -x "$SHM_BENCH" ] || { echo "70-shm.sh: $SHM_BENCH not built (make build, or set BUILD_DIR)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HOLDFAST_STATE_DIR=$work/state
export HOLDFAST_SHM_BENCH_DIR=$work
if [ "${SHM_BENCH_QUICK:-0}" = 1 ]; then reps=2 min_time=0.05 SECONDS_PER_RUN=0.3; else reps=5 min_time=0.2; fi

echo "machine: $(uname -sr), $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "uncontended (Google Benchmark, $reps interleaved repetitions)..." >&2
"$SHM_BENCH" --benchmark_repetitions="$reps" --benchmark_min_time="$min_time" \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
  --benchmark_format=json --benchmark_out="$work/gbench.json" --benchmark_out_format=json >/dev/null

: >"$work/callgrind.txt"
if command -v valgrind >/dev/null; then
  echo "uncontended under callgrind..." >&2
  for v in pthread robust robust_inline shm shm_fair shm_shared shm_none guard guard_coarse guard_none clock clock_coarse; do
    for n in 10000 30000; do
      valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$SHM_BENCH" loop "$v" "$n" 2>"$work/cg.log"
      echo "$v $n $(grep -oE 'Collected : [0-9]+' "$work/cg.log" | awk '{print $3}')" >>"$work/callgrind.txt"
    done
  done
fi

echo "contended: $PROCS processes, ${SECONDS_PER_RUN}s per run, two rounds..." >&2
: >"$work/contended.jsonl"
for round in 1 2; do
  for v in pthread robust shm shm_fair guard flock; do
    "$SHM_BENCH" contended "$v" "$PROCS" "$SECONDS_PER_RUN" >>"$work/contended.jsonl"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

PYTHONPATH="$(dirname "$0")" "$PY" - "$work" <<'PYEOF'
import json, os, sys, collections
import gbench
work = sys.argv[1]
med = gbench.times_by_arg(os.path.join(work, "gbench.json"))
print()
print("Uncontended acquire+release, ns (median; wall clock, CPU time in brackets), ratio to pthread_mutex in a shared mapping:")
print()
print("| variant | ns | / pthread | ≤ 2x |")
print("|---|---:|---:|:---:|")
base = med["pthread"]
UNCONTENDED = ("pthread", "robust", "robust_inline", "shm", "shm_fair", "shm_shared", "shm_none", "guard", "guard_coarse",
               "guard_none", "clock", "clock_coarse")
for v in UNCONTENDED:
    r = med[v][1] / base[1]
    verdict = "(a clock read alone)" if v.startswith("clock") else "yes" if r <= 2 else "**NO**"
    print(f"| {v} | {med[v][0]:,.1f} ({med[v][1]:,.2f}) | {r:.2f}x | {verdict} |")
cg = {}
for line in open(os.path.join(work, "callgrind.txt")):
    f = line.split()
    if len(f) == 3 and f[2].isdigit():
        cg.setdefault(f[0], {})[int(f[1])] = int(f[2])
if cg:
    print()
    print("Instructions per acquire+release (callgrind, 30,000 minus 10,000 iterations):")
    print()
    print("| variant | instructions | / pthread |")
    print("|---|---:|---:|")
    per = {v: (c[30000] - c[10000]) / 20000 for v, c in cg.items()}
    for v in UNCONTENDED:
        if v in per:
            print(f"| {v} | {per[v]:,.0f} | {per[v] / per['pthread']:.2f}x |")
runs = collections.defaultdict(list)
for line in open(os.path.join(work, "contended.jsonl")):
    j = json.loads(line)
    runs[j["variant"]].append(j)
print()
print("Contended, zero hold time (median of the two rounds by grants/s). grants = acquisitions while all")
print("processes contend; handoffs = strict changes of owner (grants whose previous holder was another process):")
print()
print("| variant | procs | grants/s | / pthread | handoffs/s | / pthread | wait p50 | wait p99 | wait max |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
med_run = {}
CONTENDED = ("pthread", "robust", "shm", "shm_fair", "guard", "flock")
for v in CONTENDED:
    rs = sorted(runs[v], key=lambda j: j["grants_per_s"])
    med_run[v] = rs[len(rs) // 2]
pb = med_run["pthread"]
for v in CONTENDED:
    j = med_run[v]
    print(f"| {v} | {j['procs']} | {j['grants_per_s']:,.0f} | {j['grants_per_s'] / pb['grants_per_s']:.2f}x | "
          f"{j['handoffs_per_s']:,.0f} | {j['handoffs_per_s'] / max(pb['handoffs_per_s'], 1):.2f}x | "
          f"{j['wait_p50_ns'] / 1e3:,.1f} µs | {j['wait_p99_ns'] / 1e3:,.1f} µs | {j['wait_max_ns'] / 1e6:,.1f} ms |")
s = med_run["shm"]
print()
print(f"shm, >= 1,000,000 contended grants/s among {s['procs']} processes: "
      f"{'yes' if s['grants_per_s'] >= 1e6 else 'NO'} ({s['grants_per_s']:,.0f}); "
      f">= 1,000,000 strict changes of owner/s: {'yes' if s['handoffs_per_s'] >= 1e6 else 'NO'} "
      f"({s['handoffs_per_s']:,.0f}; pthread_mutex {pb['handoffs_per_s']:,.0f} in the same run)")
PYEOF
