#!/usr/bin/env bash
# Installs holdfast into a temp prefix and builds a program against it twice: with
# find_package(holdfast) and with pkg-config. Proves the installed package is complete.
set -euo pipefail
build_dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > /dev/null

# The installed command, where the build linked it statically, hands what needs the dynamic loader
# to the installed LIBEXECDIR/holdfast/holdfast-dynamic (README, "The static command"): an etcd
# lock on a closed port must fail as etcd unreachable, not as a missing holdfast-dynamic.
if [ -e "$build_dir/holdfast-dynamic" ]; then
  [ -x "$work/prefix/libexec/holdfast/holdfast-dynamic" ] || { echo "holdfast-dynamic not installed"; exit 1; }
  out=$("$work/prefix/bin/holdfast" lock --backend etcd://127.0.0.1:1/p NAME true 2>&1) && { echo "etcd lock succeeded: $out"; exit 1; }
  case "$out" in
    *"etcd unreachable"*) ;;
    *) echo "the installed holdfast did not hand over: $out"; exit 1 ;;
  esac
fi
mkdir -p "$work/src"
cat > "$work/src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(consumer CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(holdfast REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE holdfast::holdfast)
CMAKE
cat > "$work/src/main.cpp" <<'CPP'
#include <holdfast/lock.hpp>
#include <cstdio>
int main(int, char** argv) {
  auto lock = holdfast::Lock::acquire(argv[1]);
  std::printf("%llu\n", static_cast<unsigned long long>(lock.token()));
  return lock.token() > 0 ? 0 : 1;
}
CPP
cmake -S "$work/src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" > /dev/null
cmake --build "$work/build" > /dev/null
"$work/build/consumer" "$work/cmake.lock"
g++ -std=c++20 "$work/src/main.cpp" -o "$work/pc_consumer" \
  $(PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" pkg-config --define-prefix --cflags --libs --static holdfast)
"$work/pc_consumer" "$work/pc.lock"
echo "installed package: find_package and pkg-config consumers build and run"

# The C API: a plain C11 program against the installed holdfast.h and libholdfast_c via pkg-config.
pc="PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig"
cflags=$(env "$pc" pkg-config --define-prefix --cflags holdfast-c)
libs=$(env "$pc" pkg-config --define-prefix --libs holdfast-c)
here=$(cd "$(dirname "$0")" && pwd)
gcc -std=c11 -Wall -Wextra -Werror -pedantic $cflags "$here/capi_consumer.c" -o "$work/capi_consumer" $libs
mkdir -p "$work/capi"
HOLDFAST_STATE_DIR="$work/capi/state" LD_LIBRARY_PATH="$work/prefix/lib" "$work/capi_consumer" "$work/capi"
# Every exported symbol carries one of the ABI's version nodes (HOLDFAST_C_1, HOLDFAST_C_1.1 for
# what API version 2 added, HOLDFAST_C_1.2 for version 3, HOLDFAST_C_1.3 for 4, HOLDFAST_C_1.4 for 5); nothing else (no C++ symbol) is
# exported. Each later node holds exactly its functions and they are nowhere else, so a program
# using them fails to load on an older library instead of misbehaving.
exported=$(nm -D --defined-only "$work/prefix/lib/libholdfast_c.so.1" | awk '$2 == "T" {print $3}')
if echo "$exported" | grep -Ev '@@HOLDFAST_C_1(\.[1234])?$' | grep -q .; then
  echo "unversioned or foreign symbols exported:"; echo "$exported" | grep -Ev '@@HOLDFAST_C_1(\.[1234])?$'; exit 1
fi
check_node() {  # NODE SYMBOL...: exactly these symbols, each only in NODE
  local node=$1; shift
  for sym in "$@"; do
    if [ "$(echo "$exported" | grep "^$sym@")" != "$sym@@$node" ]; then
      echo "$sym is not exported as $sym@@$node:"; echo "$exported" | grep "^$sym@" || true; exit 1
    fi
  done
  if [ "$(echo "$exported" | grep -c "@@${node//./\\.}\$")" -ne $# ]; then
    echo "$node holds more than $*:"; echo "$exported" | grep "@@${node//./\\.}\$"; exit 1
  fi
}
check_node HOLDFAST_C_1.1 hf_write_fenced hf_accepted_fence
check_node HOLDFAST_C_1.2 hf_lockfile_open_url
check_node HOLDFAST_C_1.3 hf_lockfile_holder
check_node HOLDFAST_C_1.4 hf_ensure_url hf_status_url hf_stop_url
echo "installed package: C API consumer builds with pkg-config and runs"

# The Python module: installed under PREFIX/HOLDFAST_PYTHON_INSTALL_DIR, it imports from there with
# /usr/bin/python3 and finds libholdfast_c through its relative RPATH (no LD_LIBRARY_PATH).
pydir=$(sed -n 's/^HOLDFAST_PYTHON_INSTALL_DIR:[A-Z]*=//p' "$build_dir/CMakeCache.txt")
if [ -n "$pydir" ]; then
  test -f "$work/prefix/$pydir/holdfast/py.typed"
  test -f "$work/prefix/$pydir/holdfast/_native.pyi"
  env -u LD_LIBRARY_PATH PYTHONPATH="$work/prefix/$pydir" /usr/bin/python3 -c '
import sys, holdfast
assert holdfast.__file__.startswith(sys.argv[1]), holdfast.__file__
with holdfast.FileLock(sys.argv[2]) as lock:
    assert lock.token
' "$work/prefix/$pydir" "$work/py.lock"
  # With the default prefix, that directory is on /usr/bin/python3's own sys.path.
  /usr/bin/python3 -c 'import sys; d = "/usr/local/" + sys.argv[1]; assert d in sys.path, (d, sys.path)' "$pydir"
  echo "installed package: /usr/bin/python3 imports the holdfast module"
fi
