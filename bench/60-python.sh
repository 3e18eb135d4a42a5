#!/usr/bin/env bash
# Python: holdfast.FileLock vs python filelock vs raw fcntl.flock, warm holdfast.ensure vs a pid
# file + /proc check, in one interleaved run (bench/python_bench.py). Prints the table recorded in
# the "## Python" section of docs/PERFORMANCE.md. Always Debian's interpreter.
set -euo pipefail
: "${BUILD_DIR:?set BUILD_DIR (bench/run does)}"
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -d "$BUILD_DIR/python/holdfast" ]; then echo "no Python module in $BUILD_DIR (skipped)"; exit 0; fi
PYTHONPATH="$BUILD_DIR/python" /usr/bin/python3 "$here/python_bench.py" "$@"
