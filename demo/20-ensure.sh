#!/usr/bin/env bash
# Exactly one instance, on demand: 20 concurrent `holdfast ensure` → one daemon, one pid
set -euo pipefail
: "${HOLDFAST:?}" "${DEMO_DIR:?}"
state="$DEMO_DIR/state"
starts="$DEMO_DIR/ensure-starts"
# A small daemon: counts its starts, takes 0.3 s to get ready, then says so s6-style with a
# newline on fd 3, and serves (sleeps) until stopped.
daemon=(sh -c 'echo $$ >> "$0"; sleep 0.3; echo ready >&3; exec sleep 300' "$starts")

echo "20 clients ask for instance 'demo-server' at the same moment:"
for i in $(seq 20); do
  "$HOLDFAST" ensure demo-server --state-dir "$state" --ready fd:3 -- "${daemon[@]}" >"$DEMO_DIR/client.$i" &
done
wait
echo "  pids the 20 clients got: $(sort -u "$DEMO_DIR"/client.* | tr '\n' ' ')"
echo "  times the daemon started: $(wc -l <"$starts")"

echo "A warm ensure returns at once with the same pid:"
"$HOLDFAST" ensure demo-server --state-dir "$state" --ready fd:3 --json -- "${daemon[@]}" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print("  pid %(pid)s, state %(state)s, started by this call: %(started)s, waited %(waited_ms).2f ms" % r)'

echo "A command that dies before it is ready: the caller gets its exit status and log tail:"
"$HOLDFAST" ensure demo-broken --state-dir "$state" --ready notify -- sh -c 'echo "config error: no port"; exit 3' 2>&1 |
  sed 's/^/  /' || true

echo "status:"
"$HOLDFAST" status --state-dir "$state" | sed 's/^/  /'

echo "stop asks the verified supervisor (pid + start time + lock holder), through a pidfd, to stop every process of the instance:"
"$HOLDFAST" stop demo-server --state-dir "$state" 2>&1 | sed 's/^/  /'
rc=0
"$HOLDFAST" status demo-server --state-dir "$state" >"$DEMO_DIR/status.out" || rc=$?
sed 's/^/  /' "$DEMO_DIR/status.out"
echo "  status NAME exit code: $rc (LSB: 0 running, 1 stale, 3 stopped, 4 unknown)"
