#!/usr/bin/env bash
# Probe throughput: rounds per second of `holdfast probe` with 20 workers on tmpfs, per primitive.
# Baseline from the same run: the primitive's own cost for one round, i.e. 20 attempts at the
# measured median latency done back to back. overhead = round time / that baseline.
set -euo pipefail
: "${HOLDFAST:?set HOLDFAST to the built holdfast binary}"
ROUNDS=${PROBE_BENCH_ROUNDS:-3000}
dir=$(mktemp -d /dev/shm/holdfast-bench-probe.XXXXXX)
trap 'rm -rf "$dir"' EXIT
printf '%-8s %10s %12s %12s %12s %10s\n' primitive rounds/s round_us median_us baseline_us overhead
for p in mkdir excl link rename flock ofd posix; do
  "$HOLDFAST" probe "$dir" --workers 20 --rounds "$ROUNDS" --primitive "$p" --no-semantics --json |
    python3 -c '
import json, sys
r = json.load(sys.stdin); p = r["primitives"][0]
rps = p["rounds"] / r["elapsed_seconds"]
round_us = 1e6 / rps
base = r["workers"] * p["median_us"]
print("%-8s %10.0f %12.1f %12.2f %12.1f %9.1fx" % (p["primitive"], rps, round_us, p["median_us"], base, round_us / base))'
done
