// holdfast device: MicroPython/CircuitPython boards on a serial port — exec, run, deploy, list.
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "duration.hpp"
#include "holdfast/device.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"

namespace holdfast::cli {

namespace {

struct DeviceArgs {
  std::string port;
  std::string code;
  std::string file;
  std::string source;
  std::string dest;
  std::string drive;
  std::string verify = "auto";
  std::string flush_timeout = "60s";
  std::string reboot_timeout = "15s";
  std::string step_timeout = "5s";
  std::string timeout = "inf";
  bool no_raw_paste = false;
  bool no_push = false;
  bool no_reboot = false;
  bool json = false;
  std::string journal;
  bool no_guard = false;
  bool force = false;
  std::string reconnect_timeout = "10s";
};

std::chrono::milliseconds ms(std::chrono::nanoseconds d) {
  if (d == kNoLimit) return std::chrono::milliseconds::max();
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

// The port: --port, else $HOLDFAST_DEVICE_PORT, else the only board's serial port.
std::string pick_port(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("HOLDFAST_DEVICE_PORT"); env != nullptr && *env != '\0') return env;
  std::vector<std::string> found;
  for (const auto& b : device::list_boards()) {
    if (b.port) found.push_back(b.port->device);
  }
  if (found.size() == 1) return found.front();
  throw Error("", "device", found.empty() ? "no board found; give --port" : "several boards found; give --port",
              exit_code::usage);
}

device::ReplOptions repl_options(const DeviceArgs& a) {
  device::ReplOptions o;
  o.allow_raw_paste = !a.no_raw_paste;
  o.step_timeout = ms(parse_duration(a.step_timeout, "--step-timeout"));
  o.output_timeout = ms(parse_duration(a.timeout, "--timeout", Infinite::allowed));
  return o;
}

int run_code(const DeviceArgs& a, const std::string& code) {
  auto port = device::Port::open(pick_port(a.port));
  device::RawRepl repl(port.fd(), repl_options(a));
  repl.enter();
  auto r = repl.exec(code, [](std::string_view chunk) {
    std::fwrite(chunk.data(), 1, chunk.size(), stdout);
    std::fflush(stdout);
  });
  if (!r.err.empty()) {
    std::fwrite(r.err.data(), 1, r.err.size(), stderr);
    return device::exit_code::board_exception;
  }
  return exit_code::ok;
}

std::string read_all_stdin() {
  return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
}

int do_deploy(const DeviceArgs& a) {
  device::DeployOptions o;
  o.port = pick_port(a.port);
  o.drive = a.drive;
  o.push_flush = !a.no_push;
  o.reboot = !a.no_reboot;
  o.verify = a.verify == "sha256"     ? device::VerifyMethod::sha256
             : a.verify == "crc32"    ? device::VerifyMethod::crc32
             : a.verify == "readback" ? device::VerifyMethod::readback
                                      : device::VerifyMethod::automatic;
  o.flush_timeout = ms(parse_duration(a.flush_timeout, "--flush-timeout"));
  o.reboot_timeout = ms(parse_duration(a.reboot_timeout, "--reboot-timeout"));
  o.reconnect_timeout = ms(parse_duration(a.reconnect_timeout, "--reconnect-timeout"));
  o.repl = repl_options(a);
  o.repl.output_timeout = o.repl.step_timeout * 4;
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  if (tty) {
    o.on_progress = [](std::string_view phase, std::string_view detail) {
      std::fprintf(stderr, "\r\033[K%.*s: %.*s", static_cast<int>(phase.size()), phase.data(),
                   static_cast<int>(detail.size()), detail.data());
      std::fflush(stderr);
    };
  }
  struct ClearLine {
    bool tty;
    ~ClearLine() {
      if (tty) std::fputs("\r\033[K", stderr);
    }
  };
  device::DeployResult r;
  {
    ClearLine clear{tty};
    r = device::deploy(a.source, a.dest, o);
  }
  if (a.json) {
    nlohmann::json j{{"dest", r.dest},         {"size", r.size},           {"sha256", r.sha256},
                     {"verified_by", r.verified_by}, {"checks", r.checks}, {"pushed", r.pushed},
                     {"dirty_pages_seen", r.dirty_pages_seen}, {"rebooted", r.rebooted},
                     {"write_ms", r.write_ms.count()}, {"flush_ms", r.flush_ms.count()},
                     {"verify_ms", r.verify_ms.count()}, {"reboot_ms", r.reboot_ms.count()},
                     {"total_ms", r.total_ms.count()}};
    if (!r.reconnected.empty()) j["reconnected"] = r.reconnected;
    std::puts(j.dump().c_str());
  } else if (tty) {
    std::fprintf(stderr, "%s: %llu bytes verified by %s after %u check(s)%s in %.2fs\n", r.dest.c_str(),
                 static_cast<unsigned long long>(r.size), r.verified_by.c_str(), r.checks,
                 r.rebooted ? ", board rebooted into it" : "", static_cast<double>(r.total_ms.count()) / 1000.0);
  }
  return exit_code::ok;
}

int do_list(const DeviceArgs& a) {
  auto boards = device::list_boards();
  if (a.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& b : boards) {
      nlohmann::json j;
      if (b.port) {
        j["port"] = {{"device", b.port->device}, {"by_id", b.port->by_id}, {"usb_serial", b.port->usb_serial},
                     {"vendor_id", b.port->vendor_id}, {"product_id", b.port->product_id},
                     {"manufacturer", b.port->manufacturer}, {"product", b.port->product}};
      } else {
        j["port"] = nullptr;
      }
      if (b.drive) {
        j["drive"] = {{"mount", b.drive->mount}, {"source", b.drive->source},
                      {"usb_serial", b.drive->usb_serial}, {"firmware", b.drive->firmware}};
      } else {
        j["drive"] = nullptr;
      }
      arr.push_back(j);
    }
    std::puts(arr.dump(2).c_str());
    return exit_code::ok;
  }
  for (const auto& b : boards) {
    std::string line;
    if (b.port) {
      line += b.port->device;
      if (!b.port->by_id.empty()) line += " (" + b.port->by_id + ")";
      if (!b.port->usb_serial.empty()) line += " serial " + b.port->usb_serial;
      if (!b.port->product.empty()) line += " \"" + b.port->product + "\"";
    } else {
      line += "(no serial port)";
    }
    if (b.drive) {
      line += "  drive " + b.drive->mount;
      if (!b.drive->firmware.empty()) line += "  [" + b.drive->firmware + "]";
    }
    std::puts(line.c_str());
  }
  return exit_code::ok;
}

// The user's terminal in raw mode for the session; restored on every path.
class RawStdin {
 public:
  RawStdin() {
    if (::isatty(STDIN_FILENO) == 0 || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawStdin() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawStdin(const RawStdin&) = delete;
  RawStdin& operator=(const RawStdin&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

// How term and reboot follow the board across a reset: by its USB serial number, when it has one
// and --reconnect-timeout is not 0. Empty (do not follow) otherwise.
std::function<device::Port()> follow_across_reset(const std::string& path, const DeviceArgs& a) {
  std::string serial = device::usb_serial_of_port(path);
  auto timeout = ms(parse_duration(a.reconnect_timeout, "--reconnect-timeout"));
  if (serial.empty() || timeout.count() <= 0) return {};
  return [serial, timeout] { return device::reopen_by_serial(serial, timeout); };
}

int do_term(const DeviceArgs& a) {
  const std::string path = pick_port(a.port);
  auto port = device::Port::open(path);
  device::TermOptions o;
  o.reconnect = follow_across_reset(path, a);
  o.drive = a.drive;
  o.journal = a.journal;
  o.guard = !a.no_guard;
  o.on_notice = [](std::string_view s) {
    std::fprintf(stderr, "\r\n[holdfast] %.*s\r\n", static_cast<int>(s.size()), s.data());
  };
  std::fputs("[holdfast] connected; Ctrl-] exits\r\n", stderr);
  RawStdin raw;
  return device::run_terminal(port, o);
}

int do_reboot(const DeviceArgs& a) {
  const std::string path = pick_port(a.port);
  auto port = device::Port::open(path);
  device::RebootOptions o;
  o.reconnect = follow_across_reset(path, a);
  o.drive = a.drive;
  o.journal = a.journal;
  o.force = a.force;
  o.flush_timeout = ms(parse_duration(a.flush_timeout, "--flush-timeout"));
  o.timeout = ms(parse_duration(a.reboot_timeout, "--timeout"));
  o.repl = repl_options(a);
  o.on_notice = [](std::string_view s) {
    std::fprintf(stderr, "holdfast device: %.*s\n", static_cast<int>(s.size()), s.data());
  };
  device::reboot_board(port, o);
  if (::isatty(STDERR_FILENO) != 0) std::fputs("holdfast device: the board rebooted and started its code\n", stderr);
  return exit_code::ok;
}

}  // namespace

Run add_device(CLI::App& root) {
  auto a = std::make_shared<DeviceArgs>();
  auto* cmd = root.add_subcommand(
      "device",
      "MicroPython and CircuitPython boards on a serial port (see docs/DEVICE.md).\n"
      "Exit codes: 0 ok, 1 the board's code raised (traceback on stderr), 64 usage, 66 missing SRC,\n"
      "73 the board's filesystem is read-only to code, 74 I/O error flushing, 80 port busy (the\n"
      "holder is named), 81 board not answering, 82 flush timeout, 83 digest mismatch, 84 reboot not\n"
      "observed, 85 a running program ignores Ctrl-C, 86 the board reset mid-command.");
  cmd->require_subcommand(1);
  // Options several subcommands share, declared once so their spelling and help stay identical.
  auto add_port_only = [&](CLI::App* sub) {
    sub->add_option("--port,-p", a->port, "Serial port (default $HOLDFAST_DEVICE_PORT, else the only board)");
  };
  auto add_step_timeout = [&](CLI::App* sub) {
    sub->add_option("--step-timeout", a->step_timeout, "Deadline for each protocol step (default 5s)");
  };
  auto add_port = [&](CLI::App* sub) {
    add_port_only(sub);
    sub->add_flag("--no-raw-paste", a->no_raw_paste, "Use plain raw mode even where raw-paste is available");
    add_step_timeout(sub);
  };
  auto add_guard = [&](CLI::App* sub) {
    sub->add_option("--drive", a->drive, "The board's mounted USB drive, for the Ctrl-D guard");
    sub->add_option("--journal", a->journal, "Pending-write journal (default: holdfast write --record's)");
  };
  auto add_reconnect = [&](CLI::App* sub, const char* what) {
    sub->add_option("--reconnect-timeout", a->reconnect_timeout,
                    std::string(what) + ", wait this long for the board's USB serial to reappear (default 10s, 0 = don't)");
  };
  auto* exec = cmd->add_subcommand("exec", "Run CODE (or stdin with -) on the board through the raw REPL");
  add_port(exec);
  exec->add_option("CODE", a->code, "Python code, or - for stdin")->required();
  exec->add_option("--timeout", a->timeout, "Deadline for the code's output (default inf)");
  auto* run = cmd->add_subcommand("run", "Run a local FILE on the board through the raw REPL");
  add_port(run);
  run->add_option("FILE", a->file, "Python file")->required();
  run->add_option("--timeout", a->timeout, "Deadline for the code's output (default inf)");
  auto* deploy = cmd->add_subcommand(
      "deploy",
      "Put SRC on the board as DEST (default: SRC's name) so it runs the new code, never the old or a\n"
      "torn one: write (through --drive, temp + rename; else over the raw REPL, temp + os.rename),\n"
      "push the flush from the host, verify the board's own view (sha256/crc32/read-back), then\n"
      "soft-reboot and see it start.");
  add_port(deploy);
  deploy->add_option("SRC", a->source, "Local file")->required();
  deploy->add_option("DEST", a->dest, "Path on the board (default: SRC's name, at the root)");
  deploy->add_option("--drive", a->drive, "The board's mounted USB drive (CIRCUITPY)");
  deploy->add_option("--verify", a->verify, "auto (default), sha256, crc32 or readback")
      ->check(CLI::IsMember({"auto", "sha256", "crc32", "readback"}));
  deploy->add_option("--flush-timeout", a->flush_timeout, "Deadline for the board to see the file (default 60s)");
  deploy->add_option("--reboot-timeout", a->reboot_timeout, "Deadline for the reboot banner (default 15s)");
  deploy->add_flag("--no-push", a->no_push, "Do not push the flush; wait for the kernel's writeback");
  deploy->add_flag("--no-reboot", a->no_reboot, "Verify only; do not soft-reboot");
  deploy->add_flag("--json", a->json, "Print a JSON summary on stdout");
  add_reconnect(deploy, "After a reset during the reboot");
  auto* term = cmd->add_subcommand(
      "term",
      "Interactive terminal (Ctrl-] exits). Ctrl-D guard: a Ctrl-D typed while a write to the board's\n"
      "--drive is still in the host's page cache (or a `holdfast write --record` entry under it does not\n"
      "match yet) is held until the flush is pushed and done; a second Ctrl-D sends it anyway.");
  add_port_only(term);
  add_guard(term);
  term->add_flag("--no-guard", a->no_guard, "Pass Ctrl-D through at once");
  add_reconnect(term, "After a reset");
  auto* reboot = cmd->add_subcommand(
      "reboot",
      "Soft-reboot the board (Ctrl-D) through the Ctrl-D guard: while a write to its --drive is not on\n"
      "the board yet, push the flush and wait (--flush-timeout, then exit 82 without rebooting); then\n"
      "see the reboot banner and the code start within --timeout (else exit 84).");
  add_port_only(reboot);
  add_step_timeout(reboot);
  add_guard(reboot);
  reboot->add_flag("--force", a->force, "Reboot even while writes are pending (with a warning)");
  reboot->add_option("--flush-timeout", a->flush_timeout, "Deadline for pending writes to reach the board (default 60s)");
  reboot->add_option("--timeout", a->reboot_timeout, "Deadline for the reboot to be seen (default 15s)");
  add_reconnect(reboot, "After a reset");
  auto* list = cmd->add_subcommand("list", "Boards present: serial ports, USB drives, firmware");
  list->add_flag("--json", a->json, "JSON output");

  return [a, exec, run, deploy, list, term, reboot]() -> int {
    try {
      if (exec->parsed()) return run_code(*a, a->code == "-" ? read_all_stdin() : a->code);
      if (run->parsed()) {
        auto fd = sys::open_or_throw(AT_FDCWD, a->file, O_RDONLY, 0, "open");
        auto code = sys::pread_all(fd.get());
        if (!code) throw Error(errno, a->file, "read");
        return run_code(*a, *code);
      }
      if (deploy->parsed()) return do_deploy(*a);
      if (list->parsed()) return do_list(*a);
      if (term->parsed()) return do_term(*a);
      if (reboot->parsed()) return do_reboot(*a);
    } catch (const device::DeviceError& e) {
      std::fprintf(stderr, "holdfast device: %s\n", e.what());
      return e.exit_code();
    }
    return exit_code::usage;
  };
}

}  // namespace holdfast::cli
