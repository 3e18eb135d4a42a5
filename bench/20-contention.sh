#!/usr/bin/env bash
# Locks under contention, per backend, on tmpfs and disk (bench/contention_bench.cpp):
#   recovery  from the holder's SIGKILL to the next waiter's grant (goal: ≤ 1 ms kernel locks,
#             ≤ 20 ms dotlocks), ROUNDS rounds, beside the bare kernel primitives (bare-ofd,
#             bare-flock: the same fork, kill and wait with an OFD lock / flock(2) alone);
#   fairness  8 processes, zero hold time, SECONDS each: handoffs/s, wait p50/p99/max, and the
#             grants of the least and the most served process.
# Prints markdown tables for docs/PERFORMANCE.md. Environment: BUILD_DIR (default ./build),
# LOCK_BENCH_TMPFS (default /dev/shm), LOCK_BENCH_DISK (default /var/tmp), CONTENTION_ROUNDS (20),
# CONTENTION_SECONDS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD_DIR=${BUILD_DIR:-$(cd "$here/.." && pwd)/build}
BENCH=$BUILD_DIR/bench/holdfast_contention_bench
[ -x "$BENCH" ] || { echo "20-contention.sh: $BENCH not built" >&2; exit 1; }
rounds=${CONTENTION_ROUNDS:-20}
seconds=${CONTENTION_SECONDS:-3}
dirs=()
cleanup() { for d in "${dirs[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
out=$(mktemp)
dirs+=("$out")
for fs in tmpfs disk; do
  base=${LOCK_BENCH_TMPFS:-/dev/shm}; [ $fs = disk ] && base=${LOCK_BENCH_DISK:-/var/tmp}
  d=$(mktemp -d "$base/holdfast-contention.XXXXXX")
  dirs+=("$d")
  # The kernel primitives alone, from forks of the same process; then a holdfast holder with a
  # bare waiter: the floor for the waiter, since the holder's exit (address space first, its
  # descriptors after) is most of a kernel lock's recovery.
  for be in bare-ofd bare-flock ofd/bare-waiter flock/bare-waiter; do
    echo "{\"fs\":\"$fs\",$("$BENCH" recovery "$d" $be "$rounds" | cut -c2-)" >>"$out"
  done
  for be in ofd flock excl link; do
    echo "{\"fs\":\"$fs\",$("$BENCH" recovery "$d" $be "$rounds" | cut -c2-)" >>"$out"
    echo "{\"fs\":\"$fs\",$("$BENCH" fairness "$d" $be 8 "$seconds" | cut -c2-)" >>"$out"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nRecovery: holder SIGKILLed → next waiter granted (µs)\n")
print("| fs | backend | p50 | p90 | max | p50 / bare | p50 / bare waiter | goal | met (p90) | met (max) |")
print("|---|---|---:|---:|---:|---:|---:|---:|:---:|:---:|")
rec = [r for r in rows if r["mode"] == "recovery"]
bare = {(r["fs"], r["backend"][5:]): r for r in rec if r["backend"].startswith("bare-")}
floor = {(r["fs"], r["backend"].split("/")[0]): r for r in rec if r["backend"].endswith("/bare-waiter")}
for r in rec:
    if r["backend"].startswith("bare-") or r["backend"].endswith("/bare-waiter"):
        what = "both bare" if r["backend"].startswith("bare-") else "holdfast holder, bare waiter"
        print(f"| {r['fs']} | {r['backend']} ({what}) | {r['p50_us']:,.0f} | {r['p90_us']:,.0f} | {r['max_us']:,.0f} | | | | | |")
        continue
    goal = 1000 if r["backend"] in ("ofd", "flock") else 20000
    b, f = bare.get((r["fs"], r["backend"])), floor.get((r["fs"], r["backend"]))
    ratio = f"{r['p50_us'] / b['p50_us']:.2f}x" if b else ""
    fratio = f"{r['p50_us'] / f['p50_us']:.2f}x" if f else ""
    print(f"| {r['fs']} | {r['backend']} | {r['p50_us']:,.0f} | {r['p90_us']:,.0f} | {r['max_us']:,.0f} | {ratio} | {fratio} | "
          f"{goal:,} | {'yes' if r['p90_us'] <= goal else '**NO**'} | {'yes' if r['max_us'] <= goal else '**NO**'} |")
print("\nFairness: 8 processes, zero hold time (wait = acquire() call to grant, µs)\n")
print("| fs | backend | handoffs/s | p50 wait | p99 wait | max wait | grants: least / most served |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    if r["mode"] != "fairness": continue
    print(f"| {r['fs']} | {r['backend']} | {r['handoffs_per_s']:,.0f} | {r['p50_us']:,.1f} | {r['p99_us']:,.1f} | "
          f"{r['max_us']:,.0f} | {r['least_grants']:,} / {r['most_grants']:,} |")
PY
