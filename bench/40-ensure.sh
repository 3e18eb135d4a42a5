#!/usr/bin/env bash
# Ensure: warm ensure (in-process and as a command) and a 100-client cold start, each beside its
# floor in the same run: fork+exec of /bin/true for commands, the bare reads for in-process.
# Prints the ratios recorded in the "## Ensure" section of docs/PERFORMANCE.md.
set -euo pipefail
: "${BUILD_DIR:?set BUILD_DIR (bench/run does)}"
bin="$BUILD_DIR/bench/holdfast_ensure_bench"
[ -x "$bin" ] || bin="$BUILD_DIR/holdfast_ensure_bench"
out=$(mktemp /tmp/holdfast-ensure-bench.XXXXXX.json)
trap 'rm -f "$out"' EXIT
echo "command: $bin --benchmark_out=$out --benchmark_out_format=json ${*:-}"
echo "state directory under: ${HOLDFAST_BENCH_DIR:-/tmp} ($(stat -f -c %T "${HOLDFAST_BENCH_DIR:-/tmp}"))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" --benchmark_out="$out" --benchmark_out_format=json "$@" >/dev/null 2>&1
python3 - "$out" <<'PY'
import json, sys
runs = {b["name"].split("/")[0]: b for b in json.load(open(sys.argv[1]))["benchmarks"]}
def t(name):  # real time in microseconds; "name@counter" reads a millisecond counter
    if "@" in name:
        name, counter = name.split("@")
        return runs[name][counter] * 1000
    b = runs[name]
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]
    return b["real_time"] * scale
rows = [
    ("warm ensure, in-process", "warm:in_process", "floor:warm_syscalls", "open+GETLK+read record+read /proc/PID/stat"),
    ("warm ensure, command", "warm:command", "floor:spawn_true", "fork+exec+wait /bin/true"),
    ("cold start, 100 library clients: READY -> last client", "cold:library_x100", None, "absolute (goal: 20 ms)"),
    ("cold start, 100 library clients: release -> last client", "cold:library_x100@release_to_last_ms", "floor:true_x100", "100 concurrent /bin/true, release -> last exit"),
    ("cold start, 100 commands: release -> last client", "cold:command_x100@release_to_last_ms", "floor:true_x100", "100 concurrent /bin/true, release -> last exit"),
]
print(f"| {'measurement':<55} | {'holdfast':>10} | {'floor':>10} | ratio | floor is")
print(f"|{'-'*57}|{'-'*12}|{'-'*12}|-------|---------")
for label, name, floor, what in rows:
    fmt = lambda us: f"{us/1000:.1f} ms" if us >= 1000 else f"{us:.1f} us"
    h = t(name)
    if floor is None:
        print(f"| {label:<55} | {fmt(h):>10} | {'-':>10} | {'-':>5} | {what}")
        continue
    f = t(floor)
    print(f"| {label:<55} | {fmt(h):>10} | {fmt(f):>10} | {h/f:5.2f} | {what}")
for name in ("cold:library_x100", "cold:command_x100"):
    b = runs[name]
    print(f"{name}: median client {b['median_client_ms']:.1f} ms after READY; spawn->READY {b['spawn_to_ready_ms']:.1f} ms (the daemon sleeps 50 ms)")
lib = t("cold:library_x100") / 1000
warm = t("warm:in_process")
print(f"goals: last library client within 20 ms of READY: {'met' if lib <= 20 else 'NOT met'} ({lib:.1f} ms); "
      f"warm in-process under 50 us: {'met' if warm < 50 else 'NOT met'} ({warm:.1f} us)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
