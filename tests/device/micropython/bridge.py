#!/usr/bin/python3
"""Puts a real MicroPython (the npm package @micropython/micropython-webassembly-pyscript, run by
node with a pty as its terminal) behind a second pty that holdfast opens as a serial port.

The WebAssembly port's raw-paste is broken (it answers R\\x01 and then hangs), so the bridge
answers the raw-paste request "\\x05A\\x01" itself with "R\\x00" ("understood, not supported"), which
is what a board without raw-paste says; everything else passes through unchanged.
Usage: bridge.py MICROPYTHON_MJS. Prints "READY /dev/pts/N"."""
import os
import pty
import select
import signal
import sys
import tty


def main():
    mjs = sys.argv[1]
    pid, board = pty.fork()
    if pid == 0:
        os.execvp("node", ["node", mjs])
    tty.setraw(board)  # no ONLCR: the board's bytes arrive as it wrote them
    host, slave = os.openpty()
    tty.setraw(host)
    tty.setraw(slave)

    def stop(*_):
        os.kill(pid, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    sys.stdout.write("READY %s\n" % os.ttyname(slave))
    sys.stdout.flush()
    while True:
        r, _, _ = select.select([board, host], [], [])
        if board in r:
            try:
                data = os.read(board, 65536)
            except OSError:
                stop()
            os.write(host, data)
        if host in r:
            try:
                data = os.read(host, 65536)
            except OSError:
                continue
            if b"\x05A\x01" in data:
                data = data.replace(b"\x05A\x01", b"")
                os.write(host, b"R\x00")
            if data:
                os.write(board, data)


if __name__ == "__main__":
    main()
