#!/usr/bin/env bash
# Durable hand-off: atomic_write vs a hand-written write+fsync+rename+fsync(dir) loop, digest
# throughput vs memcpy, and wait detection latency (inotify vs 500 ms polling), all in one run.
# Prints ratios (holdfast / baseline; lower is better) for docs/PERFORMANCE.md.
set -euo pipefail
: "${BUILD_DIR:?}"
bin="$BUILD_DIR/bench/holdfast_durable_bench"
[ -x "$bin" ] || { echo "missing $bin (build target holdfast_durable_bench)"; exit 1; }
out=$(mktemp /tmp/holdfast-durable-bench.XXXXXX.json)
trap 'rm -f "$out"' EXIT
# The durable replaces are interleaved pairwise inside one benchmark (fsync latency drifts with
# load); the other benchmarks take the median of 3 repetitions.
"$bin" --benchmark_repetitions=3 --benchmark_min_time=0.5 --benchmark_out="$out" \
  --benchmark_out_format=json --benchmark_report_aggregates_only=true >/dev/null
PYTHONPATH="$(dirname "$0")" python3 - "$out" <<'PY'
import sys
import gbench
data, med = gbench.medians(sys.argv[1])
def t(name, key="real_time"): return med[name][key]
def bps(name): return med[name]["bytes_per_second"]
print(f"machine: {data['context'].get('num_cpus')} cpus, load {data['context'].get('load_avg')}")
for size, label in ((4096, "4 KiB"), (1 << 20, "1 MiB")):
    b = med[[k for k in med if k.startswith(f"BM_DurableReplacePaired/{size}/")][0]]
    print(f"atomic_write {label}: {b['holdfast_us']:8.1f} us vs hand-written {b['baseline_us']:8.1f} us  "
          f"ratio {b['ratio']:.3f} (median of per-pair ratios)")
mem = bps("BM_Memcpy")
for name, label in (("BM_DigestXxh128", "XXH3-128"), ("BM_DigestSha256", "sha256")):
    print(f"digest {label}: {bps(name)/2**30:6.2f} GiB/s = {bps(name)/mem:.2f}x memcpy ({mem/2**30:.2f} GiB/s)")
ino = [k for k in med if k.startswith("BM_WaitLatencyInotify")][0]
pol = [k for k in med if k.startswith("BM_WaitLatencyPolling500ms")][0]
print(f"wait latency after data lands: inotify {t(ino):.2f} ms, polling(500ms) {t(pol):.1f} ms, "
      f"ratio {t(ino)/t(pol):.3f}")
PY
