#!/usr/bin/env bash
# Filesystem truth: probe catches filesystems that lie
set -uo pipefail
: "${HOLDFAST:?}" "${DEMO_DIR:?}"
FAULTFS="$(dirname "$HOLDFAST")/tools/faultfs/faultfs"

echo "\$ holdfast probe /dev/shm --rounds 100   # tmpfs: every primitive atomic, locks enforced"
"$HOLDFAST" probe /dev/shm --rounds 100 --no-semantics

if [ ! -x "$FAULTFS" ] || [ ! -e /dev/fuse ] || [ "$(id -u)" != 0 ]; then
  echo "(skipping the faultfs part: needs root, /dev/fuse and the built faultfs)"
  exit 0
fi
mkdir -p "$DEMO_DIR/backing" "$DEMO_DIR/lying"
if ! "$FAULTFS" "$DEMO_DIR/backing" "$DEMO_DIR/lying" -o nonatomic_create,nolocks 2>/dev/null; then
  echo "(skipping the faultfs part: FUSE mount refused here)"
  exit 0
fi
trap 'fusermount3 -u "$DEMO_DIR/lying" 2>/dev/null || umount -l "$DEMO_DIR/lying"' EXIT
for _ in $(seq 50); do mountpoint -q "$DEMO_DIR/lying" && break; sleep 0.1; done
echo
echo "\$ faultfs BACKING LYING -o nonatomic_create,nolocks   # WSL2-drvfs-like creates, nolock-NFS-like locks"
echo "\$ holdfast probe LYING --rounds 20 --workers 10"
"$HOLDFAST" probe "$DEMO_DIR/lying" --rounds 20 --workers 10
rc=$?
if [ "$rc" = 0 ]; then echo "(exit 0: the backend holdfast picks here was measured safe)"
else echo "(exit $rc: the backend holdfast would pick here is UNSAFE)"; fi
