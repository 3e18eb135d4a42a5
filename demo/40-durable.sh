#!/usr/bin/env bash
# Durable hand-off: atomic write, digests, waiting for the bytes (not the size), pending writes
set -euo pipefail
H=${HOLDFAST:?}
D=$DEMO_DIR/durable
mkdir -p "$D"
export HOLDFAST_JOURNAL=$D/state/pending.jsonl
say() { printf '\n\033[36m# %s\033[0m\n' "$*"; }

say "1. holdfast write: temp file, fsync, rename, fsync(dir) — readers see old or new, never half"
printf 'print("hello v1")\n' | "$H" write --mode 0640 "$D/code.py"
ls -l "$D/code.py"
"$H" digest "$D/code.py"
"$H" digest --alg sha256 "$D/code.py" | tee "$D/SHA256SUMS"
"$H" digest --check "$D/SHA256SUMS"
printf 'tampered\n' >> "$D/code.py"
"$H" digest --check "$D/SHA256SUMS" || echo "(exit $? — the check noticed)"

say "2. A writer that sets the size first and lands the bytes 1.5 s later (what vfat/USB does)"
head -c 300000 /dev/urandom > "$D/build.bin"
( truncate -s 300000 "$D/board.bin"; sleep 1.5
  dd if="$D/build.bin" of="$D/board.bin" bs=64k conv=notrunc,fsync status=none ) &
sleep 0.2
echo "size already right: $(stat -c %s "$D/board.bin") bytes — a size check would say 'done' now"
"$H" wait --like "$D/build.bin" --timeout 0.5s "$D/board.bin" || echo "(exit $? — correctly not done yet)"
"$H" wait --like "$D/build.bin" --timeout 10s --json "$D/board.bin"
wait
say "   A plain copy is in the page cache at once, on the device ~30 s later: wait says which"
cp "$D/build.bin" "$D/copy.bin"
"$H" wait --like "$D/build.bin" --timeout 0.5s "$D/copy.bin" || echo "(exit $? — not on the device yet)"
"$H" wait --like "$D/build.bin" --flush --timeout 10s --json "$D/copy.bin"

say "3. --via: check where the reader is (here a local shell stands in for ssh/a device)"
"$H" wait --like "$D/build.bin" --via 'sha256sum "$1"' --timeout 5s --json "$D/board.bin"

say "4. Pending journal: record writes, gate on all of them"
echo one | "$H" write --record "$D/a.txt"
echo two | "$H" write --record "$D/b.txt"
cat "$HOLDFAST_JOURNAL"
echo "someone else" > "$D/b.txt"   # edited after our write: it can never be confirmed
"$H" wait --pending --timeout 5s   # confirms a.txt, drops b.txt with a warning
echo "still pending: $(wc -l < "$HOLDFAST_JOURNAL") entries"
echo two | "$H" write --record "$D/b.txt"
"$H" wait --pending --timeout 5s && echo "all pending writes confirmed; journal now has $(wc -l < "$HOLDFAST_JOURNAL") entries"
