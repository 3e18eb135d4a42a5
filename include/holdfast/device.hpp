// holdfast::device — the board hand-off for MicroPython and CircuitPython boards on a serial port.
//
// Three layers, each usable alone:
//   * Port: a serial port opened without disturbing the modem lines (HUPCL cleared, DTR/RTS never
//     toggled, raw termios) and held exclusively against every other tool's scheme: flock(2)
//     (pyserial/mpremote), a UUCP "LCK..NAME" file (minicom, picocom, screen) and TIOCEXCL.
//   * RawRepl: the MicroPython raw REPL, byte for byte, with raw-paste flow control where the board
//     has it and plain raw mode otherwise (docs/DEVICE.md has the transcript).
//   * deploy(): write → push the flush → verify the board's own view → soft-reboot → see it start.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace holdfast::device {

// Exit codes of `holdfast device` beyond the shared ones in error.hpp (docs/EXIT_CODES.md).
namespace exit_code {
inline constexpr int board_exception = 1;   // exec/run: the code raised; traceback on stderr
inline constexpr int port_busy = 80;        // another program holds the port
inline constexpr int not_answering = 81;    // no raw REPL prompt / protocol bytes in time
inline constexpr int flush_timeout = 82;    // the board's view did not reach the new content
inline constexpr int digest_mismatch = 83;  // the board reads complete but different content
inline constexpr int reboot_not_seen = 84;  // no soft-reboot banner / code start in time
inline constexpr int kbd_intr_disabled = 85;  // a running program ignores Ctrl-C
inline constexpr int board_reset = 86;      // the board reset (banner) in the middle of a command
}  // namespace exit_code

// A failure talking to a board; exit_code() is one of the codes above or a shared one.
class DeviceError : public std::runtime_error {
 public:
  DeviceError(const std::string& message, int exit) : std::runtime_error(message), exit_(exit) {}
  int exit_code() const noexcept { return exit_; }

 private:
  int exit_;
};

// ---- the port ----

struct PortOptions {
  // Directory for UUCP lock files; empty = $HOLDFAST_UUCP_LOCK_DIR, else /run/lock if it exists,
  // else /var/lock. A missing directory means no UUCP locking (nobody else could use it either).
  std::string uucp_lock_dir;
  bool uucp_lock = true;
  unsigned baud = 115200;  // USB CDC ignores it; real UARTs need it
};

// An open, exclusively held serial port. Releases exactly what it took, in reverse order.
class Port {
 public:
  // Opens `path` O_RDWR|O_NOCTTY|O_NONBLOCK, takes flock(LOCK_EX|LOCK_NB), creates the UUCP lock
  // file, sets TIOCEXCL, and sets raw 8N1 termios with HUPCL and HUPCL-driven line drops cleared.
  // It never calls TIOCMSET/TIOCMBIC/TIOCMBIS, so DTR/RTS keep whatever the driver set (Linux
  // raises both on the first open of a tty; that cannot be avoided from user space, but closing no
  // longer drops them, so ESP32 auto-reset circuits see no edge from us).
  // Throws DeviceError(port_busy) naming the holder ("held by minicom, pid 1234 (UUCP lock
  // /run/lock/LCK..ttyACM0)"), or holdfast::Error for a missing/unopenable path.
  static Port open(const std::string& path, const PortOptions& options = {});

  Port(Port&&) noexcept;
  Port& operator=(Port&&) noexcept;
  Port(const Port&) = delete;
  Port& operator=(const Port&) = delete;
  ~Port();

  int fd() const noexcept;
  const std::string& path() const noexcept;

  struct State;

 private:
  explicit Port(std::unique_ptr<State> state) noexcept;
  std::unique_ptr<State> state_;
};

// Who holds a port, if anyone, by any of the three schemes. Empty when free (or unknown).
std::string port_holder(const std::string& path, const PortOptions& options = {});

// ---- the raw REPL ----

struct ReplOptions {
  // Deadline for each protocol step (prompt, OK, the raw-paste ack).
  std::chrono::milliseconds step_timeout{5000};
  // Deadline for the code's own output (stdout EOF and stderr EOF); max() = none (a `run` of a
  // long program must not be killed at 10 s, mpremote's most reported complaint).
  std::chrono::milliseconds output_timeout = std::chrono::milliseconds::max();
  bool allow_raw_paste = true;
  // Plain raw mode pacing (mpremote's: 256 B per 10 ms, so a UART RX buffer never overruns).
  size_t raw_chunk = 256;
  std::chrono::milliseconds raw_chunk_delay{10};
};

struct ExecResult {
  std::string out;  // the code's stdout
  std::string err;  // the traceback, empty when the code did not raise
  bool used_raw_paste = false;
};

// The board's state as the banner showed it.
enum class Firmware { unknown, micropython, circuitpython };

// The raw REPL on an open descriptor (a Port's or any tty/pty fd). Not thread-safe.
class RawRepl {
 public:
  explicit RawRepl(int fd, ReplOptions options = {});

  // Interrupts whatever runs (Ctrl-C twice), drains, enters raw REPL (Ctrl-A) and waits for
  // "raw REPL; CTRL-B to exit\r\n>". Throws DeviceError: kbd_intr_disabled when the board kept
  // printing but never reached the prompt (a program disabled KeyboardInterrupt or swallows it),
  // not_answering when it stayed silent.
  void enter();

  // Runs `code` and returns its stdout and stderr. Requires enter(). Uses raw-paste
  // ("\x05A\x01" → "R\x01", window W, "\x01" adds W) unless the board answers "R\x00" or is too old
  // ("ra…"), then plain raw mode for the rest of the connection. `on_output` (optional) sees
  // stdout as it arrives. Throws DeviceError(not_answering/board_reset) on protocol failures.
  ExecResult exec(std::string_view code,
                  const std::function<void(std::string_view)>& on_output = {});

  // As exec, but throws DeviceError(board_exception) with the traceback's last line when the code
  // raised.
  std::string eval_or_throw(std::string_view code);

  // Leaves raw REPL (Ctrl-B) and soft-reboots from the friendly REPL (Ctrl-D), so main.py/code.py
  // runs. Returns once the reboot banner ("soft reboot") and, for CircuitPython, "code.py output:"
  // or, for MicroPython, the friendly prompt, arrived. Everything read goes to `transcript`.
  // Throws DeviceError(reboot_not_seen) at the deadline.
  void soft_reboot(std::chrono::milliseconds deadline, std::string* transcript = nullptr);

  Firmware firmware() const noexcept { return firmware_; }
  bool raw_paste_supported() const noexcept { return raw_paste_ != PasteState::unsupported; }

 private:
  enum class PasteState { untried, supported, unsupported };
  int fd_;
  ReplOptions options_;
  PasteState raw_paste_ = PasteState::untried;
  Firmware firmware_ = Firmware::unknown;
  std::string buffered_;
  friend struct ReplIo;
};

// ---- deploy ----

enum class VerifyMethod { automatic, sha256, crc32, readback };

// One look at the board's own view of a file (see check_board_view).
struct BoardView {
  bool exists = false;
  uint64_t size = 0;     // os.stat(path)[6] on the board (FAT: the directory entry)
  uint64_t read = 0;     // bytes the board actually read
  std::string method;    // "sha256", "crc32" or "readback"
  bool matched = false;  // size, bytes read and digest all equal the expected content
  std::string differs;   // one line, empty when matched
};

// Asks the board (in raw REPL) for its view of `board_path` and compares it with `expected`.
// Never throws for a missing or unreadable file (that is an observation); throws DeviceError on
// protocol failures.
BoardView check_board_view(RawRepl& repl, const std::string& board_path, std::string_view expected,
                           VerifyMethod method = VerifyMethod::automatic);

struct DeployOptions {
  std::string port;            // required unless only the drive is used and no_reboot
  std::string drive;           // a mounted board drive; empty = write over the raw REPL
  bool push_flush = true;      // false = wait for the kernel's writeback (bench / web editor)
  bool reboot = true;
  VerifyMethod verify = VerifyMethod::automatic;
  std::chrono::milliseconds flush_timeout{60000};
  std::chrono::milliseconds reboot_timeout{15000};
  // The port vanishing during the reboot (a reset that re-enumerates the USB device): wait this
  // long for a port with the same USB serial number, reopen it and confirm the reboot there.
  // 0 = fail with board_reset at once. Elsewhere a vanished port is board_reset.
  std::chrono::milliseconds reconnect_timeout{10000};
  PortOptions port_options;
  ReplOptions repl;
  // Progress: phase name and a detail line (bytes, dirty pages, checks).
  std::function<void(std::string_view phase, std::string_view detail)> on_progress;
};

struct DeployResult {
  std::string dest;             // the path on the board
  uint64_t size = 0;
  std::string sha256;           // of the source
  std::string verified_by;      // "sha256" / "crc32" / "readback"
  unsigned checks = 0;          // board view checks until it matched
  uint64_t dirty_pages_seen = 0;  // max dirty+writeback pages of the file seen on the host
  bool pushed = false;
  bool rebooted = false;
  std::chrono::milliseconds write_ms{0}, flush_ms{0}, verify_ms{0}, reboot_ms{0}, total_ms{0};
  std::string reboot_transcript;
  std::string reconnected;      // the port the board came back as after a reset, if it did
};

// The whole hand-off. Throws DeviceError with one of the codes above (or holdfast::Error for the
// source file). On failure nothing half-written is left under `dest`: the old file stays whole
// (the temp file is removed where the board still answers).
DeployResult deploy(const std::string& source, const std::string& dest,
                    const DeployOptions& options);

// ---- the terminal ----

struct TermOptions {
  int in_fd = 0;   // the user's keys
  int out_fd = 1;  // the board's output
  std::string drive;    // the board's mounted drive: enables the Ctrl-D guard's page-cache check
  std::string journal;  // pending-write journal (holdfast write --record); empty = default
  bool guard = true;
  unsigned char exit_key = 0x1d;  // Ctrl-]
  // Notices for the user (the guard holding or releasing Ctrl-D), one line each.
  std::function<void(std::string_view)> on_notice;
  // Called when the port hangs up (the board reset): returns the board's port reopened (e.g.
  // reopen_by_serial) or throws DeviceError. Empty = the terminal ends on a hang-up.
  std::function<Port()> reconnect;
};

// What still stands between the host's writes and the board for the Ctrl-D guard: files on
// `drive` with dirty or writeback pages in the host page cache (cachestat), and journal entries
// under `drive` whose content is not yet what was recorded. Empty = nothing pending.
std::vector<std::string> pending_for_board(const std::string& drive, const std::string& journal);

// An interactive terminal on `port` until the exit key or EOF on in_fd. The Ctrl-D guard: a Ctrl-D
// typed while writes to the board's drive are pending is held; holdfast pushes the flush
// (syncfs of the drive, fsync of its block device) and passes the byte once nothing is pending, or
// at once on a second Ctrl-D (with a warning). Returns 0.
int run_terminal(Port& port, const TermOptions& options);

// ---- reboot ----

struct RebootOptions {
  std::string drive;    // the board's mounted drive: enables the Ctrl-D guard (as in term)
  std::string journal;  // pending-write journal (holdfast write --record); empty = default
  bool force = false;   // send Ctrl-D even while writes are pending (on_notice gets a warning)
  // How long the guard waits for pending writes to reach the board (exit 82 after it).
  std::chrono::milliseconds flush_timeout{60000};
  // Deadline for the reboot to be seen once Ctrl-D is sent (exit 84 after it).
  std::chrono::milliseconds timeout{15000};
  ReplOptions repl;
  std::function<void(std::string_view)> on_notice;  // guard notices, one line each
  // Called when the port goes away during the reboot (a reset that re-enumerates the board):
  // returns the board's port reopened (reopen_by_serial), where the reboot is then confirmed.
  // Empty = board_reset.
  std::function<Port()> reconnect;
};

struct RebootResult {
  std::vector<std::string> held_for;  // what was pending when Ctrl-D was due (empty: nothing)
  bool forced = false;                // Ctrl-D went out while something was pending (--force)
  std::string transcript;             // what the board printed from Ctrl-B to its code starting
  std::string reconnected;            // the port the board came back as after a reset, if it did
};

// Soft-reboots the board on `port` through the Ctrl-D guard: while pending_for_board(drive,
// journal) lists anything, pushes the flush (syncfs of the drive) and re-checks every 200 ms;
// Ctrl-D goes out only once nothing is pending (or at once with force). Then interrupts whatever
// runs, and reboots from the friendly REPL exactly as deploy does (RawRepl::soft_reboot), so the
// banner ("soft reboot") and, on CircuitPython, "code.py output:" are seen. Throws DeviceError:
// flush_timeout when writes stay pending past flush_timeout (no Ctrl-D was sent),
// reboot_not_seen, not_answering, kbd_intr_disabled, board_reset.
RebootResult reboot_board(Port& port, const RebootOptions& options);

// ---- discovery ----

struct SerialPortInfo {
  std::string device;        // /dev/ttyACM0
  std::string by_id;         // /dev/serial/by-id/usb-... (empty if none)
  std::string usb_serial;    // from sysfs, empty if not USB
  std::string vendor_id, product_id, manufacturer, product;
};

struct DriveInfo {
  std::string mount;         // /media/u/CIRCUITPY
  std::string source;        // /dev/sdb1
  std::string usb_serial;
  std::string firmware;      // first line of boot_out.txt
};

struct BoardInfo {
  std::optional<SerialPortInfo> port;
  std::optional<DriveInfo> drive;
};

struct DiscoveryRoots {
  // Overridable for tests: $HOLDFAST_SYSFS_ROOT (default /sys), $HOLDFAST_DEV_ROOT (default /dev),
  // $HOLDFAST_MOUNTINFO (default /proc/self/mountinfo).
  std::string sys = "/sys";
  std::string dev = "/dev";
  std::string mountinfo = "/proc/self/mountinfo";
  static DiscoveryRoots from_environment();
};

// Every board present: serial ports and board drives (a mount with boot_out.txt at its root),
// paired by USB serial number.
std::vector<BoardInfo> list_boards(const DiscoveryRoots& roots = DiscoveryRoots::from_environment());

// ---- following a board across a reset ----

// The USB serial number of the board whose serial port is `port` (any name of the same tty: the
// /dev node, a by-id link), as list_boards(roots) reports it; empty when it has none or is absent.
std::string usb_serial_of_port(const std::string& port,
                               const DiscoveryRoots& roots = DiscoveryRoots::from_environment());

// Waits up to `timeout` for a serial port with USB serial `serial` to exist (under any name) and
// opens it with Port::open (the same three locks). Throws DeviceError(board_reset) naming the
// serial when none could be opened in time.
Port reopen_by_serial(const std::string& serial, std::chrono::milliseconds timeout,
                      const PortOptions& options = {},
                      const DiscoveryRoots& roots = DiscoveryRoots::from_environment());

}  // namespace holdfast::device
