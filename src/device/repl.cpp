// The MicroPython raw REPL (shared/runtime/pyexec.c, same code in CircuitPython), byte for byte:
//   enter:      "\r\x03\x03" (interrupt), drain, "\r\x01" → "raw REPL; CTRL-B to exit\r\n>"
//   raw-paste:  "\x05A\x01" → "R\x01" + window W (u16 LE); "\x01" from the board adds W; data;
//               "\x04" → "\x04" (compiled), then the output below
//   plain raw:  code, "\x04" → "OK"
//   output:     stdout "\x04" stderr "\x04" ">"
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fmt/format.h>
#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"

namespace holdfast::device {

namespace {
constexpr std::string_view kRawPrompt = "raw REPL; CTRL-B to exit\r\n>";

detail::Clock::time_point deadline_in(std::chrono::milliseconds d) {
  auto now = detail::Clock::now();
  if (d >= std::chrono::duration_cast<std::chrono::milliseconds>(detail::Clock::time_point::max() -
                                                                  now))
    return detail::Clock::time_point::max();
  return now + d;
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(s.size() > 120 ? s.size() - 120 : 0)) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return out;
}

bool looks_like_reset(std::string_view s) {
  return s.find("soft reboot\r\n") != std::string_view::npos &&
         (s.find(">>> ") != std::string_view::npos ||
          s.find("code.py output:") != std::string_view::npos ||
          s.find("raw REPL; CTRL-B") != std::string_view::npos);
}
}  // namespace

// Byte-level I/O with deadlines over the board's descriptor (non-blocking).
struct ReplIo {
  RawRepl& r;

  void write(std::string_view data) const {
    while (!data.empty()) {
      ssize_t n = ::write(r.fd_, data.data(), data.size());
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        pollfd p{r.fd_, POLLOUT, 0};
        ::poll(&p, 1, 100);
        continue;
      }
      throw DeviceError(fmt::format("write to the board: {}", n < 0 ? std::strerror(errno) : "closed"),
                        exit_code::not_answering);
    }
  }

  // Reads what is available into the buffer, waiting until `deadline` for at least one byte.
  // Returns false at the deadline. The port vanishing (EIO, hang-up) throws.
  bool fill(detail::Clock::time_point deadline) const {
    for (;;) {
      auto now = detail::Clock::now();
      long long left = now >= deadline ? 0
                       : std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
      pollfd p{r.fd_, POLLIN, 0};
      int pr = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (pr < 0 && errno == EINTR) continue;
      if (pr > 0 && (p.revents & POLLIN) != 0) {
        char buf[4096];
        ssize_t n = ::read(r.fd_, buf, sizeof buf);
        if (n > 0) {
          r.buffered_.append(buf, static_cast<size_t>(n));
          return true;
        }
        // A raw tty with VMIN=0 reads 0 bytes when empty; EAGAIN likewise. Other errors: gone.
        if (n < 0 && errno != EAGAIN && errno != EINTR)
          throw DeviceError(fmt::format("the board's port went away ({})", std::strerror(errno)),
                            exit_code::board_reset);
        // A hung-up tty (its USB device or pty master gone) reads 0 and polls POLLHUP forever.
        if (n == 0 && (p.revents & (POLLHUP | POLLERR)) != 0)
          throw DeviceError("the board's port went away (hang-up)", exit_code::board_reset);
      } else if (pr > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) {
        throw DeviceError("the board's port went away (hang-up)", exit_code::board_reset);
      }
      if (detail::Clock::now() >= deadline) return false;
    }
  }

  // Everything up to and including `marker`, or nullopt at the deadline (what arrived stays
  // buffered). `partial` (optional) is fed bytes that can no longer be part of the marker.
  std::optional<std::string> read_until(std::string_view marker, detail::Clock::time_point deadline,
                                        const std::function<void(std::string_view)>& partial = {},
                                        size_t* fed = nullptr) const {
    size_t given = fed != nullptr ? *fed : 0;
    for (;;) {
      auto pos = r.buffered_.find(marker);
      if (pos != std::string::npos) {
        std::string out = r.buffered_.substr(0, pos + marker.size());
        if (partial && pos > given) partial(std::string_view(out).substr(given, pos - given));
        r.buffered_.erase(0, pos + marker.size());
        if (fed != nullptr) *fed = 0;
        return out;
      }
      if (partial) {
        size_t safe = r.buffered_.size() >= marker.size() ? r.buffered_.size() - marker.size() + 1 : 0;
        if (safe > given) {
          partial(std::string_view(r.buffered_).substr(given, safe - given));
          given = safe;
          if (fed != nullptr) *fed = given;
        }
      }
      if (!fill(deadline)) return std::nullopt;
    }
  }

  // Exactly `n` bytes, or nullopt at the deadline.
  std::optional<std::string> read_n(size_t n, detail::Clock::time_point deadline) const {
    while (r.buffered_.size() < n) {
      if (!fill(deadline)) return std::nullopt;
    }
    std::string out = r.buffered_.substr(0, n);
    r.buffered_.erase(0, n);
    return out;
  }

  // Reads until nothing arrived for `quiet` or `cap` passed. Returns what was read.
  std::string drain(std::chrono::milliseconds quiet, std::chrono::milliseconds cap) const {
    auto end = detail::Clock::now() + cap;
    std::string got = std::move(r.buffered_);
    r.buffered_.clear();
    for (;;) {
      auto now = detail::Clock::now();
      if (now >= end) break;
      if (!fill(std::min(end, now + quiet))) break;
      got += r.buffered_;
      r.buffered_.clear();
    }
    return got;
  }
};

RawRepl::RawRepl(int fd, ReplOptions options) : fd_(fd), options_(options) {}

namespace {
Firmware firmware_in(std::string_view text, Firmware current) {
  if (text.find("CircuitPython") != std::string_view::npos) return Firmware::circuitpython;
  if (text.find("MicroPython") != std::string_view::npos) return Firmware::micropython;
  return current;
}
}  // namespace

void RawRepl::enter() {
  ReplIo io{*this};
  std::string seen;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Ctrl-C twice: the first may be consumed by a readline in progress. "\r" is CircuitPython's
    // "press any key to enter the REPL".
    io.write("\r\x03\x03");
    seen += io.drain(std::chrono::milliseconds(150), std::chrono::milliseconds(1000));
    io.write("\r\x01");
    auto got = io.read_until(kRawPrompt, deadline_in(options_.step_timeout));
    if (got) {
      seen += *got;
      firmware_ = firmware_in(seen, firmware_);
      return;
    }
    seen += buffered_;
    buffered_.clear();
  }
  firmware_ = firmware_in(seen, firmware_);
  if (!seen.empty() && seen.find(kRawPrompt.substr(0, 9)) == std::string::npos) {
    throw DeviceError(
        fmt::format("a running program did not stop on Ctrl-C: it keeps printing but the raw REPL "
                    "never came (it disabled KeyboardInterrupt with micropython.kbd_intr(-1) or "
                    "catches it); reset the board or fix the program. Last output: \"{}\"",
                    printable(seen)),
        exit_code::kbd_intr_disabled);
  }
  throw DeviceError(seen.empty() ? "the board is not answering: no byte in reply to Ctrl-C and Ctrl-A "
                                   "(wrong port, or a program that disabled Ctrl-C and prints nothing)"
                                 : fmt::format("no raw REPL prompt; the board said \"{}\"", printable(seen)),
                    exit_code::not_answering);
}

ExecResult RawRepl::exec(std::string_view code, const std::function<void(std::string_view)>& on_output) {
  ReplIo io{*this};
  ExecResult result;
  auto step = [&] { return deadline_in(options_.step_timeout); };
  bool sent = false;
  if (options_.allow_raw_paste && raw_paste_ != PasteState::unsupported) {
    io.write("\x05"
             "A\x01");
    auto answer = io.read_n(2, step());
    if (!answer) throw DeviceError("the board did not answer the raw-paste request", exit_code::not_answering);
    if (*answer == "R\x01") {
      raw_paste_ = PasteState::supported;
      auto w = io.read_n(2, step());
      if (!w) throw DeviceError("no raw-paste window size", exit_code::not_answering);
      const size_t increment = static_cast<unsigned char>((*w)[0]) |
                               (static_cast<size_t>(static_cast<unsigned char>((*w)[1])) << 8U);
      if (increment == 0) throw DeviceError("raw-paste window size 0", exit_code::not_answering);
      size_t window = increment;
      size_t offset = 0;
      bool aborted = false;
      while (offset < code.size() && !aborted) {
        // Take flow-control bytes: whenever the window is closed, and whenever one is waiting.
        while (window == 0 || !buffered_.empty() || [&] {
                 pollfd p{fd_, POLLIN, 0};
                 return ::poll(&p, 1, 0) > 0;
               }()) {
          auto b = io.read_n(1, step());
          if (!b) throw DeviceError("raw-paste: the board stopped granting window", exit_code::not_answering);
          if ((*b)[0] == '\x01') {
            window += increment;
          } else if ((*b)[0] == '\x04') {
            io.write("\x04");  // the board ends the transfer early; acknowledge and stop sending
            aborted = true;
            break;
          } else {
            buffered_.insert(0, *b);
            auto rest = io.drain(std::chrono::milliseconds(200), std::chrono::milliseconds(1000));
            throw DeviceError(looks_like_reset(rest) ? "the board reset during the transfer"
                                                     : fmt::format("raw-paste: unexpected \"{}\"", printable(rest)),
                              looks_like_reset(rest) ? exit_code::board_reset : exit_code::not_answering);
          }
        }
        if (aborted) break;
        size_t n = std::min(window, code.size() - offset);
        io.write(code.substr(offset, n));
        offset += n;
        window -= n;
      }
      if (!aborted) {
        io.write("\x04");
        // The board acknowledges the end with \x04 once everything is compiled; \x01 grants that
        // arrive meanwhile are dropped.
        auto ack = io.read_until("\x04", deadline_in(options_.step_timeout * 6));
        if (!ack) throw DeviceError("raw-paste: no end-of-data acknowledgement", exit_code::not_answering);
        std::string junk = ack->substr(0, ack->size() - 1);
        junk.erase(std::remove(junk.begin(), junk.end(), '\x01'), junk.end());
        if (!junk.empty())
          throw DeviceError(looks_like_reset(junk) ? "the board reset during the transfer"
                                                   : fmt::format("raw-paste: unexpected \"{}\"", printable(junk)),
                            looks_like_reset(junk) ? exit_code::board_reset : exit_code::not_answering);
      }
      result.used_raw_paste = true;
      sent = true;
    } else if (*answer == std::string("R\0", 2)) {
      raw_paste_ = PasteState::unsupported;
    } else if (*answer == "ra") {
      // Firmware without raw-paste took \x05 as... nothing and reprinted the raw REPL banner.
      raw_paste_ = PasteState::unsupported;
      if (!io.read_until("w REPL; CTRL-B to exit\r\n>", step()))
        throw DeviceError("no raw REPL prompt after the raw-paste probe", exit_code::not_answering);
    } else {
      buffered_.insert(0, *answer);
      auto rest = io.drain(std::chrono::milliseconds(200), std::chrono::milliseconds(1000));
      throw DeviceError(looks_like_reset(rest) ? "the board reset (it printed its banner)"
                                               : fmt::format("raw-paste probe: unexpected \"{}\"", printable(rest)),
                        looks_like_reset(rest) ? exit_code::board_reset : exit_code::not_answering);
    }
  }
  if (!sent) {
    for (size_t off = 0; off < code.size(); off += options_.raw_chunk) {
      if (off > 0 && options_.raw_chunk_delay.count() > 0) std::this_thread::sleep_for(options_.raw_chunk_delay);
      io.write(code.substr(off, options_.raw_chunk));
    }
    io.write("\x04");
    auto ok = io.read_until("OK", deadline_in(options_.step_timeout));
    if (!ok || ok->size() != 2) {
      std::string said = ok ? *ok : buffered_;
      throw DeviceError(looks_like_reset(said) ? "the board reset during the transfer"
                                               : fmt::format("no OK after the code; the board said \"{}\"", printable(said)),
                        looks_like_reset(said) ? exit_code::board_reset : exit_code::not_answering);
    }
  }
  // stdout up to \x04, streamed; a reboot banner followed by a prompt instead means a reset.
  size_t fed = 0;
  std::string out_so_far;
  auto out = io.read_until(
      "\x04", deadline_in(options_.output_timeout),
      [&](std::string_view chunk) {
        out_so_far.append(chunk);
        if (on_output) on_output(chunk);
      },
      &fed);
  if (!out) {
    std::string tail = out_so_far + buffered_;
    throw DeviceError(looks_like_reset(tail) ? "the board reset while running the code"
                                             : "timed out waiting for the end of the code's output",
                      looks_like_reset(tail) ? exit_code::board_reset : exit_code::not_answering);
  }
  result.out = out->substr(0, out->size() - 1);
  auto err = io.read_until("\x04", deadline_in(options_.step_timeout));
  if (!err) throw DeviceError("timed out waiting for the end of the error output", exit_code::not_answering);
  result.err = err->substr(0, err->size() - 1);
  if (!io.read_until(">", deadline_in(options_.step_timeout)))
    throw DeviceError("no raw REPL prompt after the code ran", exit_code::not_answering);
  return result;
}

std::string RawRepl::eval_or_throw(std::string_view code) {
  auto r = exec(code);
  if (!r.err.empty()) {
    std::string_view e = r.err;
    while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.remove_suffix(1);
    auto nl = e.rfind('\n');
    throw DeviceError(fmt::format("the board raised: {}", nl == std::string_view::npos ? e : e.substr(nl + 1)),
                      exit_code::board_exception);
  }
  return r.out;
}

void RawRepl::soft_reboot(std::chrono::milliseconds deadline, std::string* transcript) {
  ReplIo io{*this};
  auto end = deadline_in(deadline);
  std::string seen;
  // Ctrl-B: back to the friendly REPL, whose banner names the firmware.
  io.write("\x02");
  auto banner = io.read_until(">>> ", end);
  if (!banner) {
    if (transcript != nullptr) *transcript = buffered_;
    throw DeviceError("no friendly REPL prompt after Ctrl-B", exit_code::reboot_not_seen);
  }
  seen += *banner;
  firmware_ = firmware_in(*banner, firmware_);
  // Ctrl-D on an empty line: soft reboot, and the board runs main.py / code.py.
  io.write("\x04");
  auto reboot = io.read_until("soft reboot\r\n", end);
  if (!reboot) {
    if (transcript != nullptr) *transcript = seen + buffered_;
    throw DeviceError("the board did not print \"soft reboot\" after Ctrl-D", exit_code::reboot_not_seen);
  }
  seen += *reboot;
  if (firmware_ == Firmware::circuitpython) {
    // CircuitPython names the file it starts: "code.py output:" (or main.py, …).
    auto started = io.read_until(" output:\r\n", end);
    if (!started) {
      if (transcript != nullptr) *transcript = seen + buffered_;
      throw DeviceError("the board rebooted but did not start its code (no \"code.py output:\")",
                        exit_code::reboot_not_seen);
    }
    seen += *started;
  } else {
    // MicroPython runs boot.py and main.py silently after the banner; collect what follows.
    seen += io.drain(std::chrono::milliseconds(100), std::chrono::milliseconds(300));
  }
  if (transcript != nullptr) *transcript = seen;
}

}  // namespace holdfast::device
