#!/usr/bin/env bash
# Keep it running: `holdfast supervise` brings a killed child back, after a growing backoff
set -euo pipefail
: "${HOLDFAST:?}" "${DEMO_DIR:?}"
state="$DEMO_DIR/state"
err="$DEMO_DIR/supervise.err"

# The pid and supervise section of the record, once it is ready with a pid other than $1.
ready_pid_other_than() {
  for _ in $(seq 3000); do
    line=$("$HOLDFAST" status demo-keeper --state-dir "$state" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin); r = s.get("record") or {}; v = r.get("supervise") or {}
if s["state"] == "ready" and str(r.get("pid")) != sys.argv[1]:
    print(r["pid"], r["spawned_unix_ns"], v.get("restarts"), v.get("last_exit") or "-")' "$1" || true)
    if [ -n "$line" ]; then echo "$line"; return; fi
    sleep 0.01
  done
  echo "timed out" >&2; return 1
}

echo "holdfast supervise demo-keeper --backoff 200ms..2s -- sleep 300   (in the background)"
"$HOLDFAST" supervise demo-keeper --state-dir "$state" --backoff 200ms..2s --healthy-after 1m -- sleep 300 2>"$err" &
sup=$!
read -r pid _ _ _ < <(ready_pid_other_than 0)
echo "  child pid $pid"
for round in 1 2 3; do
  kill -KILL "$pid"
  start=$(date +%s%N)
  read -r new spawned restarts last < <(ready_pid_other_than "$pid")
  echo "  kill -9 $pid -> restarted as pid $new $(( (spawned - start) / 1000000 )) ms later (restarts: $restarts; last: $last)"
  pid=$new
done
echo "the supervisor's decisions, each with its reason:"
grep -E "restarting in|started pid" "$err" | sed 's/^holdfast supervise: /  /'
echo "status shows them too:"
"$HOLDFAST" status demo-keeper --state-dir "$state" | sed 's/^/  /'
echo "holdfast stop demo-keeper stops the supervisor and the child:"
"$HOLDFAST" stop demo-keeper --state-dir "$state" 2>&1 | sed 's/^/  /'
wait "$sup" || true
kill -0 "$pid" 2>/dev/null && echo "  child still running?!" || echo "  child $pid is gone"
