#!/usr/bin/env bash
# Locks: exclusion across processes, fencing tokens, holder records, proof-of-death reclaim
set -euo pipefail
: "${HOLDFAST:?}" "${DEMO_DIR:?}"
d="$DEMO_DIR/lock"
mkdir -p "$d"

# Read-modify-write of a counter by 8 processes x 25 times each, first without, then with a lock.
bump() { n=$(cat "$1"); sleep 0.001; echo $((n + 1)) > "$1"; }
export -f bump
echo 0 > "$d/unlocked"; echo 0 > "$d/locked"
for i in $(seq 8); do (for j in $(seq 25); do bump "$d/unlocked"; done) & done; wait
for i in $(seq 8); do
  (for j in $(seq 25); do "$HOLDFAST" lock "$d/counter.lock" -- bash -c 'bump "$0"' "$d/locked"; done) &
done
wait
echo "200 increments by 8 racing processes: without a lock the counter says $(cat "$d/unlocked"), with holdfast lock $(cat "$d/locked")."

echo "Every grant carries a fencing token that only goes up (HOLDFAST_TOKEN):"
for i in 1 2 3; do "$HOLDFAST" lock "$d/counter.lock" -- sh -c 'echo "  token $HOLDFAST_TOKEN"'; done

echo "While a command holds the lock, 'holdfast holder' shows who, checked against /proc/locks:"
"$HOLDFAST" lock "$d/counter.lock" -- sleep 2 &
until "$HOLDFAST" holder "$d/counter.lock" >/dev/null 2>&1; [ $? -eq 1 ]; do sleep 0.01; done
"$HOLDFAST" holder "$d/counter.lock" | sed 's/^/  /' || true
echo "  a second 'holdfast lock -n' gives up at once: exit $("$HOLDFAST" lock -n "$d/counter.lock" -- true; echo $?)"
echo "  and 'holdfast lock -w 0.3' after 0.3 s: exit $("$HOLDFAST" lock -w 0.3 "$d/counter.lock" -- true; echo $?)"
wait

echo "A dotlock (for filesystems whose kernel locks do not work) whose holder is SIGKILLed:"
"$HOLDFAST" lock --backend link "$d/dot.lock" -- sleep 30 &
holder=$!
disown "$holder"
command_pid=
for _ in $(seq 500); do command_pid=$(pgrep -P "$holder" -x sleep || true); [ -n "$command_pid" ] && break; sleep 0.01; done
kill -9 "$holder"
echo "  holdfast killed; its command (pid $command_pid) still runs, so the lock is held: exit $("$HOLDFAST" lock -n --backend link "$d/dot.lock" -- true; echo $?)"
kill -9 "$command_pid"; sleep 0.1
"$HOLDFAST" holder "$d/dot.lock" | head -1 | sed 's/^/  /' || true
"$HOLDFAST" lock --backend link "$d/dot.lock" -- sh -c 'echo "  the next holdfast lock reclaims it by proof of death and runs under token $HOLDFAST_TOKEN"'
