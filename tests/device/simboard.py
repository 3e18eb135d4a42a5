#!/usr/bin/python3
"""A simulated MicroPython / CircuitPython board behind a pty, for holdfast's device tests.

It speaks the REPL protocols of shared/runtime/pyexec.c byte for byte (friendly REPL, raw REPL,
raw-paste with window flow control, soft reboot banners) and executes the code it is sent with
CPython, with `open`, `os`, `hashlib`, `binascii`, `micropython` and `time` replaced by board
versions. Its filesystem is either a directory (a MicroPython board's own flash) or a real ext2
image read DIRECTLY with `debugfs -R 'cat /PATH' IMAGE` (a CircuitPython USB drive: the host mounts
the image through a loop device, so the board sees only what the host's page cache has written
back, exactly as with a real board). In CircuitPython mode the drive is read-only to code
(Errno 30), as on a default board.

Usage: simboard.py --mode micropython|circuitpython (--fs-dir DIR | --image IMG) [options]
Prints "READY /dev/pts/N" on stdout once the port can be opened. Events (what code.py/main.py ran,
protocol violations) are appended as JSON lines to --log.
"""
import argparse
import binascii as real_binascii
import builtins
import hashlib as real_hashlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import tty

MP_BANNER = "MicroPython v1.27.0 on 2025-12-09; simulated board with sim\r\nType \"help()\" for more information.\r\n"
CP_BANNER = "Adafruit CircuitPython 9.2.1 on 2024-11-20; Simulated Board with sim\r\n"
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


class BoardInterrupt(BaseException):
    pass


class DirFS:
    """A MicroPython board's own flash: a directory, written directly (no host cache in between)."""

    def __init__(self, root):
        self.root = root

    def host(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def read(self, p):
        try:
            with builtins.open(self.host(p), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise OSError(2, "ENOENT")

    def size(self, p):
        try:
            return os.stat(self.host(p)).st_size
        except FileNotFoundError:
            raise OSError(2, "ENOENT")

    def open_write(self, p, mode):
        return builtins.open(self.host(p), mode)

    def rename(self, a, b):
        try:
            os.rename(self.host(a), self.host(b))
        except FileNotFoundError:
            raise OSError(2, "ENOENT")

    def remove(self, p):
        try:
            os.remove(self.host(p))
        except FileNotFoundError:
            raise OSError(2, "ENOENT")

    def listdir(self, p):
        return sorted(os.listdir(self.host(p)))


class ImageFS:
    """A CircuitPython drive: an ext2 image read directly with debugfs, read-only to code."""

    def __init__(self, image):
        self.image = image

    def debugfs(self, cmd):
        r = subprocess.run(["debugfs", "-R", cmd, self.image], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        return r.stdout, r.stderr.decode(errors="replace")

    def size(self, p):
        out, err = self.debugfs("stat " + p)
        if "File not found" in err or b"Size:" not in out:
            raise OSError(2, "ENOENT")
        text = out.decode(errors="replace")
        return int(text.split("Size:")[1].split()[0])

    def read(self, p):
        self.size(p)
        out, _ = self.debugfs("cat " + p)
        return out

    def open_write(self, p, mode):
        raise OSError(30, "EROFS")

    def rename(self, a, b):
        raise OSError(30, "EROFS")

    def remove(self, p):
        raise OSError(30, "EROFS")

    def listdir(self, p):
        out, _ = self.debugfs("ls -p " + p)
        names = []
        for line in out.decode(errors="replace").splitlines():
            parts = line.split("/")
            if len(parts) >= 6 and parts[5] not in (".", "..", "lost+found"):
                names.append(parts[5])
        return sorted(names)


class FatFS(ImageFS):
    """A FAT image read directly with mtools (mtype/mdir), read-only to code. The size is the
    directory entry's; the bytes are whatever the clusters hold, so an image whose entry was
    written before its data shows the new size with stale or zero content, as FAT does."""

    def run(self, *argv):
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def size(self, p):
        r = self.run("mdir", "-b", "-i", self.image, "::" + p)
        if r.returncode != 0:
            raise OSError(2, "ENOENT")
        r = self.run("mtype", "-i", self.image, "::" + p)
        return len(r.stdout)

    def read(self, p):
        r = self.run("mtype", "-i", self.image, "::" + p)
        if r.returncode != 0:
            raise OSError(2, "ENOENT")
        return r.stdout

    def listdir(self, p):
        r = self.run("mdir", "-b", "-i", self.image, "::" + p)
        return sorted(os.path.basename(x) for x in r.stdout.decode().split() if x)


class Board:
    def __init__(self, args):
        self.args = args
        self.cp = args.mode == "circuitpython"
        if args.fat_image:
            self.fs = FatFS(args.fat_image)
        else:
            self.fs = ImageFS(args.image) if args.image else DirFS(args.fs_dir)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.out_lock = threading.Lock()
        self.state = "friendly"
        self.line = b""
        self.raw_buf = b""
        self.kbd_enabled = True
        self.interrupt = threading.Event()
        self.worker = None
        self.globals = {}
        self.paste = None  # raw-paste state: {"credit", "since_grant", "data"}
        self.pending_input = b""
        self.resets_left = 1 if args.reset_after_bytes else 0
        self.received_in_raw = 0
        self.log_file = builtins.open(args.log, "a") if args.log else None
        # CircuitPython auto-reload: a host write reaching the drive while code.py runs (or has
        # finished and waits for a key) restarts it; the REPL, friendly or raw, suspends it.
        self.reloading = False
        self.reload_lock = threading.Lock()
        self.reload_at = None
        self.autoreload = self.cp and not args.no_autoreload and hasattr(self.fs, "image")
        self.drive_sig = self.image_sig() if self.autoreload else None

    # ---- output ----
    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        with self.out_lock:
            chunk = 64 if self.args.slow else len(data) or 1
            for i in range(0, len(data), chunk):
                piece = data[i:i + chunk]
                while piece:
                    try:
                        n = os.write(self.master, piece)
                        piece = piece[n:]
                    except BlockingIOError:
                        select.select([], [self.master], [], 0.1)
                if self.args.slow:
                    time.sleep(0.002)

    def log(self, **event):
        if self.log_file:
            self.log_file.write(json.dumps(event) + "\n")
            self.log_file.flush()

    def banner(self):
        return CP_BANNER if self.cp else MP_BANNER

    # ---- the board's Python environment ----
    def make_env(self, out):
        board = self

        def check_interrupt():
            if board.reloading:
                raise BoardInterrupt()
            if board.interrupt.is_set() and board.kbd_enabled:
                board.interrupt.clear()
                raise KeyboardInterrupt()

        class BoardFile(io.BytesIO):
            pass

        def b_open(p, mode="r", *a, **k):
            if any(c in mode for c in "wax+"):
                return board.fs.open_write(p, mode.replace("t", "") if "b" in mode else mode)
            data = board.fs.read(p)
            if board.args.corrupt_reads and data:
                data = bytes([data[0] ^ 0x20]) + data[1:]
            if "b" in mode:
                return BoardFile(data)
            return io.StringIO(data.decode())

        def b_print(*a, sep=" ", end="\n", file=None):
            check_interrupt()
            text = sep.join(str(x) for x in a) + end
            out(text.replace("\n", "\r\n").encode())

        class OsMod:
            @staticmethod
            def stat(p):
                size = board.fs.size(p)
                return (0o100000, 0, 0, 0, 0, 0, size, 0, 0, 0)

            @staticmethod
            def rename(a, b):
                board.fs.rename(a, b)

            @staticmethod
            def remove(p):
                board.fs.remove(p)

            @staticmethod
            def listdir(p="/"):
                return board.fs.listdir(p)

        if not self.cp:
            OsMod.sync = staticmethod(lambda: None)

        class TimeMod:
            @staticmethod
            def sleep(s):
                end = time.monotonic() + s
                while True:
                    check_interrupt()
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    time.sleep(min(left, 0.01))

            @staticmethod
            def sleep_ms(ms):
                TimeMod.sleep(ms / 1000.0)

            monotonic = staticmethod(time.monotonic)

        class MicropythonMod:
            @staticmethod
            def kbd_intr(c):
                board.kbd_enabled = c != -1

        class HashlibMod:
            sha256 = staticmethod(real_hashlib.sha256)

        class BinasciiMod:
            hexlify = staticmethod(real_binascii.hexlify)
            unhexlify = staticmethod(real_binascii.unhexlify)

        if not self.args.no_crc32:
            BinasciiMod.crc32 = staticmethod(real_binascii.crc32)

        modules = {"os": OsMod, "time": TimeMod, "micropython": MicropythonMod,
                   "binascii": BinasciiMod, "sys": sys}
        if not self.args.no_hashlib:
            modules["hashlib"] = HashlibMod

        def b_import(name, globals=None, locals=None, fromlist=(), level=0):
            if name in modules:
                return modules[name]
            raise ImportError("no module named '%s'" % name)

        env = dict(vars(builtins))
        env["open"] = b_open
        env["print"] = b_print
        env["__import__"] = b_import
        return env

    def run_code(self, source, filename, out, glb=None):
        """Runs `source`; returns the traceback text ("" if none), MicroPython-formatted."""
        glb = glb if glb is not None else {}
        glb["__builtins__"] = self.make_env(out)
        self.kbd_enabled = True
        self.interrupt.clear()
        try:
            code = compile(source, filename, "exec")
            exec(code, glb)
            return ""
        except BaseException as e:  # noqa: B902 - the board reports everything
            line = 1
            tb = e.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == filename:
                    line = tb.tb_lineno
                tb = tb.tb_next
            if isinstance(e, SyntaxError):
                line = e.lineno or 1
            msg = str(e)
            if isinstance(e, ZeroDivisionError):
                msg = "divide by zero"
            if isinstance(e, SyntaxError):
                msg = "invalid syntax"
            # MicroPython has no OSError subclasses: FileNotFoundError & co print as OSError.
            name = "OSError" if isinstance(e, OSError) else type(e).__name__
            text = "Traceback (most recent call last):\r\n  File \"%s\", line %d, in <module>\r\n%s%s\r\n" % (
                filename, line, name, (": " + msg) if msg else "")
            return text
        finally:
            self.kbd_enabled = True

    # ---- workers (code runs in a thread so Ctrl-C can reach it) ----
    def start_worker(self, fn):
        self.worker = threading.Thread(target=fn, daemon=True)
        self.worker.start()

    def busy(self):
        return self.worker is not None and self.worker.is_alive()

    def run_main_program(self, after_reboot):
        """Runs code.py (CircuitPython) or main.py (MicroPython) from the board's filesystem."""
        name = "code.py" if self.cp else "main.py"
        if self.args.program is not None and not after_reboot:
            source = self.args.program.encode()
        else:
            try:
                source = self.fs.read("/" + name)
            except OSError:
                source = None
        if self.cp:
            self.write("\r\nAuto-reload is on. Simply save files over USB to run them or enter REPL to disable.\r\n")
            if source is not None:
                self.write(name + " output:\r\n")
        if self.autoreload:
            # Writes that reached the drive before this start are part of what runs now.
            with self.reload_lock:
                self.drive_sig = self.image_sig()
                self.reload_at = None
        self.state = "program"

        def body():
            tb = ""
            if source is not None:
                try:
                    text = source.decode()
                except UnicodeDecodeError:
                    text = None
                self.log(event="run", file=name, size=len(source),
                         sha256=real_hashlib.sha256(source).hexdigest())
                if text is None:
                    tb = "Traceback (most recent call last):\r\nUnicodeError: \r\n"
                else:
                    tb = self.run_code(text, name, self.write)
                self.log(event="ran", file=name, ok=tb == "", error=tb.strip().split("\r\n")[-1] if tb else "")
            if self.reloading:
                return  # stopped by auto-reload: the watcher reboots the board
            if tb:
                self.write(tb)
            if self.cp:
                self.state = "waiting"
                self.write("\r\nCode done running.\r\n\r\nPress any key to enter the REPL. Use CTRL-D to reload.\r\n")
            else:
                self.state = "friendly"
                self.write(self.banner() + ">>> ")

        self.start_worker(body)

    def point_by_id(self, name):
        try:
            os.unlink(self.args.by_id)
        except FileNotFoundError:
            pass
        os.symlink(name, self.args.by_id)

    def reenumerate(self):
        """A reset that drops the USB device: the pty closes (the host's descriptor hangs up) and a
        new one appears under another name (--relink), as ttyACM0 coming back as ttyACM1."""
        with self.out_lock:
            os.close(self.master)
            os.close(self.slave)
            if self.args.link:
                try:
                    os.unlink(self.args.link)
                except FileNotFoundError:
                    pass
            self.master, self.slave = os.openpty()
            tty.setraw(self.slave)
            tty.setraw(self.master)
            os.set_blocking(self.master, False)
            name = self.args.relink or self.args.link
            if name:
                os.symlink(os.ttyname(self.slave), name)
            if self.args.by_id and name:
                self.point_by_id(name)
        self.log(event="reenumerated", port=os.ttyname(self.slave))

    def soft_reboot(self, from_raw):
        if not from_raw and self.args.reenumerate_on_reboot:
            self.args.reenumerate_on_reboot = False
            self.reenumerate()
        self.globals = {}
        self.log(event="soft_reboot")
        if self.cp:
            self.write("soft reboot\r\n" if from_raw else "\r\nsoft reboot\r\n")
        else:
            self.write("MPY: soft reboot\r\n")
        if from_raw:
            # In raw REPL the main program is not run after a soft reset (micropython#2249).
            self.write(RAW_PROMPT)
            self.state = "raw"
            self.raw_buf = b""
        else:
            self.run_main_program(after_reboot=True)

    def execute_raw(self, source):
        self.log(event="exec", size=len(source))

        def body():
            out = []

            def emit(b):
                self.write(b)

            tb = self.run_code(source.decode(errors="replace"), "<stdin>", emit, self.globals)
            del out
            self.write(b"\x04" + tb.encode() + b"\x04")
            # The state changes before the prompt goes out: the host may answer it at once.
            self.state = "raw"
            self.write(b">")

        self.state = "running"
        self.start_worker(body)

    def board_reset(self):
        """A reset in the middle of a transfer: buffers lost, back to the friendly REPL."""
        self.log(event="reset")
        self.raw_buf = b""
        self.paste = None
        self.globals = {}
        self.state = "friendly"
        self.write("\r\nMPY: soft reboot\r\n" if not self.cp else "\r\nsoft reboot\r\n")
        self.write(self.banner() + ">>> ")

    # ---- auto-reload ----
    def image_sig(self):
        st = os.stat(self.fs.image)
        return (st.st_mtime_ns, st.st_size)

    def watch_drive(self):
        """Polls the drive's image: a change while code.py runs or waits restarts it after a quiet
        period (CircuitPython waits 750 ms for writes to settle; the simulator 300 ms)."""
        while True:
            time.sleep(0.05)
            with self.reload_lock:
                sig = self.image_sig()
                now = time.monotonic()
                if sig != self.drive_sig:
                    self.drive_sig = sig
                    self.reload_at = now + 0.3 if self.state in ("program", "waiting") else None
                    continue
                if self.reload_at is None or now < self.reload_at:
                    continue
                self.reload_at = None
                if self.state not in ("program", "waiting"):
                    continue
                self.reloading = True
            self.log(event="autoreload")
            if self.worker is not None:
                self.worker.join()
            self.reloading = False
            if self.state == "program":
                self.write("\r\nCode stopped by auto-reload. Reloading soon.\r\n")
            self.soft_reboot(from_raw=False)

    # ---- input ----
    def feed(self, data):
        for i in range(len(data)):
            b = data[i:i + 1]
            if self.state in ("raw", "paste") and self.resets_left:
                self.received_in_raw += 1
                if self.received_in_raw >= self.args.reset_after_bytes:
                    self.resets_left -= 1
                    self.board_reset()
                    continue
            self.feed_byte(b)
        if self.paste is not None:
            self.paste["credit"] += self.paste["pending"]
            self.paste["pending"] = 0

    def feed_byte(self, b):
        st = self.state
        if st in ("program", "running"):
            if b == b"\x03":
                self.interrupt.set()
            return
        if st == "waiting":  # CircuitPython "Press any key to enter the REPL"
            if b == b"\x04":
                self.soft_reboot(from_raw=False)
                return
            self.write("\r\n" + self.banner() + ">>> ")
            self.state = "friendly"
            return
        if st == "friendly":
            if b == b"\x01":
                self.write(b"\r\n" + RAW_PROMPT)
                self.state = "raw"
                self.raw_buf = b""
            elif b == b"\x02":
                self.write("\r\n" + self.banner() + ">>> ")
            elif b == b"\x03":
                self.line = b""
                self.write("\r\n>>> ")
            elif b == b"\x04":
                if not self.line and not self.args.mute_reboot:
                    self.soft_reboot(from_raw=False)
            elif b == b"\r":
                self.line = b""
                self.write("\r\n>>> ")
            else:
                self.line += b
                self.write(b)
            return
        if st == "raw":
            if self.raw_buf == b"" and b == b"\x05" and not self.args.old_firmware:
                self.state = "paste-req"
                return
            if b == b"\x01":
                self.raw_buf = b""
                self.write(RAW_PROMPT if self.args.old_firmware else b"\r\n" + RAW_PROMPT)
            elif b == b"\x02":
                self.write("\r\n" + self.banner() + ">>> ")
                self.state = "friendly"
            elif b == b"\x03":
                self.raw_buf = b""
            elif b == b"\x04":
                if not self.raw_buf:
                    self.write(b"OK\r\n")
                    self.soft_reboot(from_raw=True)
                else:
                    self.write(b"OK")
                    src, self.raw_buf = self.raw_buf, b""
                    self.execute_raw(src)
            else:
                self.raw_buf += b
            return
        if st == "paste-req":
            self.pending_input += b
            if len(self.pending_input) < 2:
                return
            req, self.pending_input = self.pending_input, b""
            if req != b"A\x01":
                self.log(event="violation", what="bad raw-paste request %r" % req)
                self.state = "raw"
                return
            if self.args.no_raw_paste:
                self.write(b"R\x00")
                self.state = "raw"
                return
            w = self.args.window
            # credit: what the host may have sent so far (grants count only once the host could
            # have read them, i.e. from the next read of its data on).
            self.paste = {"credit": 2 * w, "since_grant": 0, "data": b"", "pending": 0}
            self.write(b"R\x01" + bytes([w & 0xff, w >> 8]) + b"\x01")
            self.state = "paste"
            return
        if st == "paste":
            p = self.paste
            if b == b"\x04":
                self.write(b"\x04")
                src = p["data"]
                self.paste = None
                self.execute_raw(src)
                return
            p["credit"] -= 1
            if p["credit"] < 0:
                self.log(event="violation", what="raw-paste window overrun")
            p["data"] += b
            p["since_grant"] += 1
            if p["since_grant"] >= self.args.window:
                p["since_grant"] -= self.args.window
                if self.args.slow:
                    time.sleep(0.005)
                p["pending"] += self.args.window
                self.write(b"\x01")
            return

    def serve(self):
        os.close(os.open(os.ttyname(self.slave), os.O_RDWR | os.O_NOCTTY))  # the name opens
        if self.args.link:
            try:
                os.unlink(self.args.link)
            except FileNotFoundError:
                pass
            os.symlink(os.ttyname(self.slave), self.args.link)
            if self.args.by_id:
                self.point_by_id(self.args.link)
        # Boot: the main program runs first (it may need Ctrl-C), else the friendly REPL.
        if self.args.program is not None:
            self.run_main_program(after_reboot=False)
        elif self.args.boot_code:
            self.run_main_program(after_reboot=True)
        else:
            self.write(self.banner() + ">>> ")
        if self.autoreload:
            threading.Thread(target=self.watch_drive, daemon=True).start()
        sys.stdout.write("READY %s\n" % os.ttyname(self.slave))
        sys.stdout.flush()
        while True:
            r, _, _ = select.select([self.master], [], [], 0.5)
            if not r:
                continue
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.01)
                continue
            if data:
                self.feed(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["micropython", "circuitpython"], default="micropython")
    ap.add_argument("--fs-dir")
    ap.add_argument("--image")
    ap.add_argument("--fat-image", help="a FAT image read with mtools (CircuitPython drive)")
    ap.add_argument("--link")
    ap.add_argument("--log")
    ap.add_argument("--program", help="source of a program running at start (needs Ctrl-C)")
    ap.add_argument("--no-raw-paste", action="store_true", help="answer R\\x00")
    ap.add_argument("--old-firmware", action="store_true", help="no raw-paste at all (answers 'ra...')")
    ap.add_argument("--no-hashlib", action="store_true")
    ap.add_argument("--no-crc32", action="store_true")
    ap.add_argument("--corrupt-reads", action="store_true", help="code reads a flipped first byte")
    ap.add_argument("--mute-reboot", action="store_true", help="Ctrl-D in the friendly REPL does nothing")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--slow", action="store_true", help="a slow line: paced output, delayed grants")
    ap.add_argument("--reset-after-bytes", type=int, default=0,
                    help="reset once after this many bytes arrive in raw/raw-paste mode")
    ap.add_argument("--boot-code", action="store_true",
                    help="run code.py/main.py at start, as a board that was just plugged in")
    ap.add_argument("--no-autoreload", action="store_true",
                    help="CircuitPython: host writes to the drive never restart code.py")
    ap.add_argument("--reenumerate-on-reboot", action="store_true",
                    help="the first soft reboot from the friendly REPL drops the port and re-creates it")
    ap.add_argument("--relink", help="the name (symlink) the port comes back as (default: --link)")
    ap.add_argument("--by-id", help="a by-id symlink kept pointing at the port's current name")
    args = ap.parse_args()
    if not args.fs_dir and not args.image and not args.fat_image:
        ap.error("--fs-dir or --image")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Board(args).serve()


if __name__ == "__main__":
    main()
