#!/usr/bin/env bash
# Board hand-off (issue 10), against the simulated board (tests/device/simboard.py) in one run:
#  1. save-to-verified-reboot of a 100 KB code.py on the loop-device board (ext2 image read
#     directly by the board): holdfast's host push vs waiting for the kernel's writeback (the web
#     editor's approach; takes ~dirty_expire_centisecs, so it runs once, and only with
#     HOLDFAST_BENCH_WRITEBACK=1 or HOLDFAST_SOAK set);
#  2. raw REPL transfer throughput over the pty: raw-paste vs plain raw mode (256 B / 10 ms).
# Needs root (loop device, mount). Prints the figures recorded in docs/PERFORMANCE.md.
set -euo pipefail
: "${BUILD_DIR:?}"
hf="$BUILD_DIR/holdfast"
src=$(cd "$(dirname "$0")/.." && pwd)
sim="$src/tests/device/simboard.py"
[ "$(id -u)" = 0 ] || { echo "device bench needs root (loop device); skipped"; exit 0; }
work=$(mktemp -d /tmp/holdfast-device-bench.XXXXXX)
simpid="" loop=""
cleanup() {
  [ -n "$simpid" ] && kill "$simpid" 2>/dev/null && wait "$simpid" 2>/dev/null || true
  mountpoint -q "$work/CIRCUITPY" && umount "$work/CIRCUITPY"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT
export HOLDFAST_UUCP_LOCK_DIR=$work
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

start_sim() {  # args: simboard options; sets $port
  /usr/bin/python3 "$sim" "$@" > "$work/ready" &
  simpid=$!
  for _ in $(seq 200); do grep -q READY "$work/ready" 2>/dev/null && break; sleep 0.05; done
  port=$(awk '{print $2}' "$work/ready")
}
stop_sim() { kill "$simpid"; wait "$simpid" 2>/dev/null || true; simpid=""; }

mke2fs -q -F -t ext2 -b 1024 "$work/drive.img" 8M
loop=$(losetup -f --show "$work/drive.img")
mkdir "$work/CIRCUITPY"
mount -t ext2 "$loop" "$work/CIRCUITPY"
start_sim --mode circuitpython --image "$work/drive.img"
echo "machine: $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg), dirty_expire $(cat /proc/sys/vm/dirty_expire_centisecs) cs"

code() {  # a 100 KB program, different every call
  /usr/bin/python3 -c "import random,sys; r=random.Random($1); sys.stdout.write(\"print('v$1')\nPAD='\" + ''.join(r.choice('abcdefgh') for _ in range(102300)) + \"'\n\")" > "$work/code.py"
}
push=()
for i in 1 2 3 4 5; do
  code "$i"
  t0=$(now_ms)
  "$hf" device deploy --port "$port" --drive "$work/CIRCUITPY" --json "$work/code.py" > "$work/j"
  push+=($(( $(now_ms) - t0 )))
done
p=$(printf '%s\n' "${push[@]}" | median)
echo "save-to-verified-reboot, 100 KB, host push: median ${p} ms of 5 (${push[*]})"
if [ -n "${HOLDFAST_BENCH_WRITEBACK:-}${HOLDFAST_SOAK:-}" ]; then
  code 99
  t0=$(now_ms)
  "$hf" device deploy --port "$port" --drive "$work/CIRCUITPY" --no-push --flush-timeout 90s --json "$work/code.py" > "$work/j"
  w=$(( $(now_ms) - t0 ))
  echo "save-to-verified-reboot, 100 KB, waiting for writeback: ${w} ms ($(cat "$work/j"))"
  echo "ratio push/writeback: $(awk -v a="$p" -v b="$w" 'BEGIN {printf "%.4f", a/b}')"
fi
stop_sim

# Throughput: a 64 KiB program through the raw REPL, raw-paste vs plain raw.
mkdir -p "$work/fs"
start_sim --fs-dir "$work/fs"
/usr/bin/python3 -c "import sys; sys.stdout.write(''.join('x = %07d\n' % (1000000 + i) for i in range(6554)) + 'print(x)\n')" > "$work/big.py"
bytes=$(stat -c %s "$work/big.py")
rp=() rw=()
for i in 1 2 3; do
  t0=$(now_ms); "$hf" device run --port "$port" "$work/big.py" > /dev/null; rp+=($(( $(now_ms) - t0 )))
  t0=$(now_ms); "$hf" device run --no-raw-paste --port "$port" "$work/big.py" > /dev/null; rw+=($(( $(now_ms) - t0 )))
done
a=$(printf '%s\n' "${rp[@]}" | median); b=$(printf '%s\n' "${rw[@]}" | median)
echo "raw REPL transfer of $bytes bytes: raw-paste ${a} ms ($(awk -v n="$bytes" -v t="$a" 'BEGIN {printf "%.0f", n/t}') kB/s), plain raw ${b} ms ($(awk -v n="$bytes" -v t="$b" 'BEGIN {printf "%.0f", n/t}') kB/s), ratio $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a/b}')"
