#!/usr/bin/env bash
# Locks: holdfast against the syscalls it cannot avoid, bare kernel locks, python3-filelock and
# flock(1), all in this one run, on tmpfs and on disk. Prints markdown tables of the ratios.
#
#   bash bench/10-lock.sh            (or `make bench`, which runs every bench/NN-*.sh)
#
# Environment: BUILD_DIR (default ./build), HOLDFAST (default $BUILD_DIR/holdfast),
# LOCK_BENCH (default $BUILD_DIR/bench/holdfast_lock_bench), LOCK_BENCH_TMPFS (default /dev/shm),
# LOCK_BENCH_DISK (default /var/tmp), LOCK_BENCH_OUT (a directory to keep the raw JSON in),
# LOCK_BENCH_QUICK=1 (fewer repetitions, for checking the script itself).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUILD_DIR=${BUILD_DIR:-$(cd "$here/.." && pwd)/build}
HOLDFAST=${HOLDFAST:-$BUILD_DIR/holdfast}
LOCK_BENCH=${LOCK_BENCH:-$BUILD_DIR/bench/holdfast_lock_bench}
TMPFS_DIR=${LOCK_BENCH_TMPFS:-/dev/shm}
DISK_DIR=${LOCK_BENCH_DISK:-/var/tmp}
PY=/usr/bin/python3  # Debian's python3, the one python3-filelock is installed for

for bin in "$HOLDFAST" "$LOCK_BENCH"; do
  [ -x "$bin" ] || { echo "10-lock.sh: $bin not built (make build, or set BUILD_DIR)" >&2; exit 1; }
done
for tool in hyperfine flock "$PY"; do
  command -v "$tool" >/dev/null || { echo "10-lock.sh: $tool missing (make deps)" >&2; exit 1; }
done

work=$(mktemp -d)
cmd_dirs=()
cleanup() {
  rm -rf "$work"
  for d in "${cmd_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

if [ "${LOCK_BENCH_QUICK:-0}" = 1 ]; then
  reps=2 min_time=0.05 py_n=2000 hf_args=(--runs 30)
else
  reps=5 min_time=0.2 py_n=20000 hf_args=()
fi
# Rounds of the interleaved command measurement (step 5).
ilv_rounds=300
[ "${LOCK_BENCH_QUICK:-0}" = 1 ] && ilv_rounds=30

fs_type() { findmnt -no FSTYPE -T "$1" 2>/dev/null | head -n1 | grep . || stat -f -c %T "$1"; }
echo "machine: $(uname -sr), $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)," \
     "$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "dirs: tmpfs=$TMPFS_DIR ($(fs_type "$TMPFS_DIR")), disk=$DISK_DIR ($(fs_type "$DISK_DIR"))"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. In-process: LockFile handle vs the syscall mirror vs bare primitive vs Lock::acquire(path).
echo "running holdfast_lock_bench ($reps repetitions, interleaved)..." >&2
HOLDFAST_LOCK_BENCH_DIRS="tmpfs=$TMPFS_DIR,disk=$DISK_DIR" "$LOCK_BENCH" \
  --benchmark_repetitions="$reps" --benchmark_min_time="$min_time" \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
  --benchmark_format=json --benchmark_out="$work/gbench.json" --benchmark_out_format=json \
  >/dev/null 2>"$work/gbench.log" || { cat "$work/gbench.log" >&2; exit 1; }

# 2. The mirror must make exactly holdfast's syscalls: count them per operation under strace.
if command -v strace >/dev/null; then
  echo "counting syscalls per operation under strace..." >&2
  for be in ofd flock excl link; do
    for v in handle syscalls; do
      HOLDFAST_LOCK_BENCH_DIRS="tmpfs=$TMPFS_DIR" HOLDFAST_LOCK_BENCH_ITERS=2000 \
        strace -f -c -o "$work/strace-$be-$v.txt" "$LOCK_BENCH" --benchmark_filter="^tmpfs:$be:$v/" \
        >/dev/null 2>"$work/strace-run.log" || { cat "$work/strace-run.log" >&2; exit 1; }
    done
  done
fi

# 2b. Instructions per operation under callgrind (load-independent): the difference between runs
#     of cg_n1 and cg_n2 iterations, per iteration, for the handle and its mirror on tmpfs.
#     LOCK_BENCH_CALLGRIND=0 skips it.
cg_n1=2000 cg_n2=6000
if [ "${LOCK_BENCH_CALLGRIND:-1}" = 1 ] && command -v valgrind >/dev/null; then
  echo "counting instructions per operation under callgrind..." >&2
  for be in ofd flock excl link; do
    for v in handle guard syscalls; do
      for n in $cg_n1 $cg_n2; do
        HOLDFAST_LOCK_BENCH_DIRS="tmpfs=$TMPFS_DIR" HOLDFAST_LOCK_BENCH_ITERS=$n \
          valgrind --tool=callgrind --callgrind-out-file=/dev/null "$LOCK_BENCH" --benchmark_filter="^tmpfs:$be:$v/" \
          >/dev/null 2>"$work/cg.log" || { cat "$work/cg.log" >&2; exit 1; }
        echo "$be $v $n $(grep -oE 'Collected : [0-9]+' "$work/cg.log" | awk '{print $3}')" >>"$work/callgrind.txt"
      done
    done
  done
fi

# 3. python3-filelock acquire+release on an existing FileLock object, per op (median of 5 timeit runs).
echo "running python3-filelock..." >&2
for fs in tmpfs disk; do
  dir=$TMPFS_DIR; [ $fs = disk ] && dir=$DISK_DIR
  py_dir=$(mktemp -d "$dir/holdfast-lock-bench-py.XXXXXX")
  cmd_dirs+=("$py_dir")
  "$PY" -c '
import json, statistics, sys, timeit
import filelock
lock = filelock.FileLock(sys.argv[1])
n = int(sys.argv[2])
def op():
    lock.acquire()
    lock.release()
op()
runs = timeit.repeat(op, number=n, repeat=5)
print(json.dumps({"ns": statistics.median(runs) / n * 1e9, "min_ns": min(runs) / n * 1e9,
                  "version": filelock.__version__, "class": type(lock).__name__}))
' "$py_dir/py.lock" "$py_n" >"$work/py-$fs.json"
done

# 4. The command: holdfast lock F -- true against flock F true.
echo "running hyperfine..." >&2
for fs in tmpfs disk; do
  dir=$TMPFS_DIR; [ $fs = disk ] && dir=$DISK_DIR
  cmd_dir=$(mktemp -d "$dir/holdfast-lock-bench-cmd.XXXXXX")
  cmd_dirs+=("$cmd_dir")
  hyperfine -N --warmup 20 "${hf_args[@]}" --style none --export-json "$work/hf-$fs.json" \
    "$HOLDFAST lock $cmd_dir/a.lock -- true" \
    "$HOLDFAST lock --backend flock $cmd_dir/b.lock -- true" \
    "flock $cmd_dir/c.lock true" \
    "$HOLDFAST lock -F $cmd_dir/d.lock true" >/dev/null
done

# 5. The same commands interleaved: hyperfine runs one command after another, so a load that
# moves between them (this machine is shared) moves the ratio by more than the difference being
# measured (a 1.46x disk row and a 0.62x tmpfs row came from the same binary and the same
# syscalls). Here every round runs each command once, in turn, on both filesystems: median wall
# clock per command, and median CPU (user+system of the command and its children, wait4).
# Each command runs in two environments, alternately: LANG=C.UTF-8 (a Debian system's usual
# locale) and no locale variables at all (the C locale: cron, containers, `env -i`). flock(1) calls
# setlocale(LC_ALL, "") and, in a UTF-8 locale, loads it: ~150,000 instructions, half its process.
# holdfast sets no locale. So the ratio depends on the environment, and both are reported.
echo "running the commands interleaved ($ilv_rounds rounds, two locales)..." >&2
ilv_dirs=()
for fs in tmpfs disk; do
  dir=$TMPFS_DIR; [ $fs = disk ] && dir=$DISK_DIR
  d=$(mktemp -d "$dir/holdfast-lock-bench-ilv.XXXXXX")
  cmd_dirs+=("$d")
  ilv_dirs+=("$d")
done
"$PY" - "$ilv_rounds" "$HOLDFAST" "$(command -v flock)" "${ilv_dirs[@]}" >"$work/ilv.json" <<'ILV'
import json, os, statistics, sys, time
rounds, holdfast, flock = int(sys.argv[1]), sys.argv[2], sys.argv[3]
no_locale = {k: v for k, v in os.environ.items() if not (k.startswith("LC_") or k in ("LANG", "LANGUAGE"))}
envs = {"utf8": dict(no_locale, LANG="C.UTF-8"), "c": no_locale}
cmds = {}
for loc in envs:
    for fs, d in zip(("tmpfs", "disk"), sys.argv[4:6]):
        cmds[(loc, fs, "holdfast")] = [holdfast, "lock", d + "/a.lock", "--", "true"]
        cmds[(loc, fs, "holdfast_flock")] = [holdfast, "lock", "--backend", "flock", d + "/b.lock", "--", "true"]
        cmds[(loc, fs, "flock")] = [flock, d + "/c.lock", "true"]
        cmds[(loc, fs, "holdfast_F")] = [holdfast, "lock", "-F", d + "/d.lock", "true"]
        cmds[(loc, fs, "flock_F")] = [flock, "-F", d + "/e.lock", "true"]
null = os.open(os.devnull, os.O_WRONLY)
wall = {k: [] for k in cmds}
cpu = {k: [] for k in cmds}
for r in range(rounds + 10):  # the first 10 rounds warm up
    for k, argv in cmds.items():
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, envs[k[0]], file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
        _, status, ru = os.wait4(pid, 0)
        t1 = time.perf_counter_ns()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{argv}: exit status {status}")
        if r >= 10:
            wall[k].append((t1 - t0) / 1e6)
            cpu[k].append((ru.ru_utime + ru.ru_stime) * 1e3)
print(json.dumps({f"{loc}:{fs}:{v}": {"wall_ms": statistics.median(wall[k]), "cpu_ms": statistics.median(cpu[k])}
                  for k in cmds for loc, fs, v in [k]}))
ILV
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

[ -n "${LOCK_BENCH_OUT:-}" ] && mkdir -p "$LOCK_BENCH_OUT" && cp "$work"/*.json "$LOCK_BENCH_OUT"/

PYTHONPATH="$(dirname "$0")" "$PY" - "$work" <<'EOF'
import glob, json, os, sys
import gbench

work = sys.argv[1]
gb, medians = gbench.medians(os.path.join(work, "gbench.json"))
med = {}  # (fs, backend, variant) -> (real ns, cpu ns)
for name, b in medians.items():
    fs, backend, variant = name.split("/")[0].split(":")
    assert b["time_unit"] == "ns"
    med[(fs, backend, variant)] = (b["real_time"], b["cpu_time"])

def ok(cond):
    return "yes" if cond else "**NO**"

print()
print(f"Google Benchmark, median of "
      f"{gb['benchmarks'][0].get('repetitions', '?')} interleaved repetitions; ns per acquire+release "
      "(wall clock; CPU-time ratio in brackets).")
print()
print("\"handle\" is a Lock from LockFile::acquire() released per iteration, \"Guard\" a LockFile::Guard per")
print("iteration. The paired columns time each against the mirror in alternating batches of 32 on the")
print("same lock file (the median of the pairs' ratios, then the median over repetitions); the goal is")
print("judged on them, because this machine's speed drifts between the separately timed benchmarks.")
print()
print("| fs | backend | holdfast handle | Guard | syscall mirror | handle / mirror (timed apart) | paired handle / mirror | ≤ 1.15x | paired Guard / mirror | ≤ 1.15x | bare primitive | handle / bare | Lock::acquire(path) |")
print("|---|---|---:|---:|---:|---:|---:|:---:|---:|:---:|---:|---:|---:|")
def paired(fs, be, variant):
    return next(b["handle_over_mirror"] for name, b in medians.items() if name.split("/")[0] == f"{fs}:{be}:{variant}")
for fs in ("tmpfs", "disk"):
    for be in ("ofd", "flock", "excl", "link"):
        h, g, m, b, p = (med[(fs, be, v)] for v in ("handle", "guard", "syscalls", "bare", "path"))
        r, rc = h[0] / m[0], h[1] / m[1]
        ph, pg = paired(fs, be, "paired"), paired(fs, be, "paired_guard")
        print(f"| {fs} | {be} | {h[0]:,.0f} | {g[0]:,.0f} | {m[0]:,.0f} | {r:.2f}x ({rc:.2f}x) | {ph:.2f}x | {ok(ph <= 1.15)} | "
              f"{pg:.2f}x | {ok(pg <= 1.15)} | {b[0]:,.0f} | {h[0] / b[0]:.1f}x | {p[0]:,.0f} |")

straces = sorted(glob.glob(os.path.join(work, "strace-*-handle.txt")))
if straces:
    def per_op(path):
        counts = {}
        for line in open(path):
            f = line.split()
            if len(f) >= 5 and f[-1] != "total" and f[0][0].isdigit() and f[3].isdigit():
                n = int(f[3]) / 2000
                if n >= 0.9:
                    counts[f[-1]] = round(n, 1)
        return counts
    print()
    print("Syscalls per acquire+release under `strace -f -c` (tmpfs, 2000 iterations):")
    print()
    print("| backend | holdfast handle | mirror identical |")
    print("|---|---|:---:|")
    for path in straces:
        be = os.path.basename(path).split("-")[1]
        h, m = per_op(path), per_op(path.replace("-handle.txt", "-syscalls.txt"))
        desc = " ".join(f"{k}×{v:g}" for k, v in sorted(h.items()))
        print(f"| {be} | {sum(h.values()):g}: {desc} | {ok(h == m)} |")

cg_path = os.path.join(work, "callgrind.txt")
if os.path.exists(cg_path):
    counts = {}
    for line in open(cg_path):
        be, v, n, c = line.split()
        counts.setdefault((be, v), {})[int(n)] = int(c)
    print()
    print("Instructions per acquire+release (callgrind, tmpfs, difference of two loop lengths per "
          "iteration; load-independent):")
    print()
    print("| backend | holdfast handle | Guard | syscall mirror | handle − mirror | Guard − mirror |")
    print("|---|---:|---:|---:|---:|---:|")
    for be in ("ofd", "flock", "excl", "link"):
        per = {}
        for v in ("handle", "guard", "syscalls"):
            (n1, c1), (n2, c2) = sorted(counts[(be, v)].items())
            per[v] = (c2 - c1) / (n2 - n1)
        print(f"| {be} | {per['handle']:,.0f} | {per['guard']:,.0f} | {per['syscalls']:,.0f} | "
              f"{per['handle'] - per['syscalls']:,.0f} | {per['guard'] - per['syscalls']:,.0f} |")

print()
print("python3-filelock: FileLock.acquire()+release() in a timeit loop vs holdfast, per op (ns):")
print()
print("| fs | python filelock | holdfast ofd handle | x faster | holdfast flock handle | x faster | Lock::acquire(path) ofd | x faster | ≥ 20x |")
print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
for fs in ("tmpfs", "disk"):
    py = json.load(open(os.path.join(work, f"py-{fs}.json")))
    ho, hf, hp = med[(fs, "ofd", "handle")][0], med[(fs, "flock", "handle")][0], med[(fs, "ofd", "path")][0]
    print(f"| {fs} | {py['ns']:,.0f} | {ho:,.0f} | {py['ns'] / ho:.1f}x | {hf:,.0f} | {py['ns'] / hf:.1f}x | "
          f"{hp:,.0f} | {py['ns'] / hp:.1f}x | {ok(py['ns'] / ho >= 20)} |")
print(f"(filelock {py['version']}, {py['class']})")

print()
print("The command, hyperfine -N --warmup 20 (median ms per run; ratio to flock(1)):")
print()
print("| fs | holdfast lock F -- true | holdfast lock --backend flock F -- true | flock F true | holdfast / flock(1) | ≤ 1.00x | holdfast lock -F F true (exec in place) | -F / flock(1) |")
print("|---|---:|---:|---:|---:|:---:|---:|---:|")
for fs in ("tmpfs", "disk"):
    res = json.load(open(os.path.join(work, f"hf-{fs}.json")))["results"]
    a, b, c, d = (r["median"] * 1e3 for r in res)
    print(f"| {fs} | {a:.3f} | {b:.3f} ({b / c:.2f}x) | {c:.3f} | {a / c:.2f}x | {ok(a <= c)} | {d:.3f} | {d / c:.2f}x |")

ilv = json.load(open(os.path.join(work, "ilv.json")))
print()
print("The same commands interleaved (every round runs each once, in turn; median ms per run, wall clock;")
print("CPU = user+system of the command and its children; ratios to flock(1) on the same filesystem):")
print()
print("| locale | fs | holdfast lock F -- true | --backend flock | flock F true | holdfast / flock(1) | ≤ 1.00x | CPU ratio | -F (exec in place) | -F / flock F true | flock -F F true | -F / flock -F |")
print("|---|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|")
for loc, name in (("utf8", "LANG=C.UTF-8"), ("c", "none (C)")):
    for fs in ("tmpfs", "disk"):
        a, b, c, d, e = (ilv[f"{loc}:{fs}:{v}"] for v in ("holdfast", "holdfast_flock", "flock", "holdfast_F", "flock_F"))
        print(f"| {name} | {fs} | {a['wall_ms']:.3f} | {b['wall_ms']:.3f} ({b['wall_ms'] / c['wall_ms']:.2f}x) | {c['wall_ms']:.3f} | "
              f"{a['wall_ms'] / c['wall_ms']:.2f}x | {ok(a['wall_ms'] <= c['wall_ms'])} | {a['cpu_ms'] / c['cpu_ms']:.2f}x | "
              f"{d['wall_ms']:.3f} | {d['wall_ms'] / c['wall_ms']:.2f}x | {e['wall_ms']:.3f} | {d['wall_ms'] / e['wall_ms']:.2f}x |")
EOF
