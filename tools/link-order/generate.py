#!/usr/bin/python3
"""Writes the symbol ordering file of the holdfast command (cli/lock-path.order).

`holdfast lock` runs once per locked command, so what it costs is mostly start-up: every page of
the executable it touches is mapped (and unmapped again at exec or exit), and the kernel maps up to
16 neighbouring pages per fault. Scattered over 3.8 MB of text, the few hundred functions the lock
path runs cost ~40 faults and ~550 mapped pages; placed next to each other, a handful of faults
and ~100 pages. The link (CMakeLists.txt, lld --symbol-ordering-file) places the functions named
here first, in this order; everything else keeps its place.

How: run the command's lock paths under callgrind (every function executed, by its mangled name),
keep the names the executable defines, and order them by how many of the runs executed them (the
start-up and the common path first). Stale or missing names are harmless: the linker skips a name
it does not find, and a function missing from the file is only placed elsewhere.

Usage: tools/link-order/generate.py BUILT_HOLDFAST [--out FILE] [--dir DIR]
Regenerate after changes that move the lock path (new functions on it, renamed ones), from an
optimized build (RelWithDebInfo or Release), and commit the result.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

# What `holdfast lock` does once per process, for each backend and each way of running the command.
# A command that cannot be executed stands for the exec itself: under --no-fork the successful exec
# would end the process before callgrind writes its profile.
SCENARIOS = [
    ["lock", "{d}/a.lock", "--", "true"],
    ["lock", "-F", "{d}/b.lock", "/nonexistent/holdfast-link-order"],
    ["lock", "--backend", "flock", "{d}/c.lock", "--", "true"],
    ["lock", "--backend", "ofd", "{d}/d.lock", "true"],
    ["lock", "--fcntl", "-F", "{d}/e.lock", "/nonexistent/holdfast-link-order"],
    ["lock", "--backend", "excl", "{d}/f.lock", "--", "true"],
    ["lock", "--backend", "link", "-F", "{d}/g.lock", "/nonexistent/holdfast-link-order"],
    ["lock", "-s", "-n", "{d}/h.lock", "-c", "true"],
    ["lock", "-w", "1", "-E", "3", "{d}/i.lock", "true"],
    ["lock", "{d}/a.lock", "-o", "true"],
]

# Functions valgrind cannot run: it does not know statmount(2) (syscall 457) and fails it with
# ENOSYS, so the profile shows the /proc/self/mountinfo fallback instead. Names matching these
# patterns are added to the common part.
UNPROFILED = [re.compile(p) for p in (r"stat_mount", r"StatmountReply")]

FN_LINE = re.compile(r"^c?fn=\(\d+\) (.+)$")


def functions_run(profile):
    """Mangled names of the functions a callgrind profile (--demangle=no) shows."""
    names = set()
    with open(profile, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = FN_LINE.match(line.rstrip("\n"))
            if m:
                names.add(m.group(1))
    return names


def defined_text_symbols(binary):
    """Names of the functions the executable defines (local ones included: lld orders them too)."""
    out = subprocess.run(["nm", "--defined-only", binary], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tTWwi":
            names.add(fields[2])
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("holdfast", help="a built holdfast executable (an optimized build)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "cli", "lock-path.order"))
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                    help="where the runs put their lock files (a temporary directory is made there)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("generate.py: valgrind is needed (Debian package valgrind)")
    holdfast = os.path.abspath(args.holdfast)
    defined = defined_text_symbols(holdfast)
    runs = {}  # name -> number of scenarios that ran it
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="holdfast-link-order.") as d:
        for i, scenario in enumerate(SCENARIOS):
            profile = os.path.join(d, f"callgrind.{i}")
            argv = [a.replace("{d}", d) for a in scenario]
            r = subprocess.run(["valgrind", "--tool=callgrind", "--demangle=no", "--trace-children=no",
                                f"--callgrind-out-file={profile}", holdfast, *argv],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if not os.path.exists(profile) or os.path.getsize(profile) == 0:
                sys.exit(f"generate.py: no profile from {' '.join(argv)} (exit {r.returncode}):\n{r.stderr}")
            for name in functions_run(profile) & defined:
                runs[name] = runs.get(name, 0) + 1
    for name in defined:
        if name not in runs and any(p.search(name) for p in UNPROFILED):
            runs[name] = len(SCENARIOS)
    if len(runs) < 100:
        sys.exit(f"generate.py: only {len(runs)} of the executable's functions ran; is {holdfast} holdfast?")
    ordered = sorted(runs, key=lambda n: (-runs[n], n))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("# The functions `holdfast lock` runs, placed first and together in the command's text by\n"
                "# the link (lld --symbol-ordering-file; CMakeLists.txt, HOLDFAST_CLI_LINK_ORDER).\n"
                "# Generated by tools/link-order/generate.py from an optimized build; stale names are harmless.\n")
        for name in ordered:
            f.write(name + "\n")
    print(f"{args.out}: {len(ordered)} functions", file=sys.stderr)


if __name__ == "__main__":
    main()
