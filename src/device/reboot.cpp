// device reboot: a soft reboot sent through the same Ctrl-D guard as `device term`.
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>
#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sys/file.hpp"

namespace holdfast::device {

namespace {

std::string describe_pending(const std::vector<std::string>& pending) {
  return pending.front() + (pending.size() > 1 ? fmt::format(" and {} more", pending.size() - 1) : "");
}

}  // namespace

RebootResult reboot_board(Port& port, const RebootOptions& options) {
  auto notice = [&](const std::string& s) {
    if (options.on_notice) options.on_notice(s);
  };
  RebootResult result;
  auto pending = pending_for_board(options.drive, options.journal);
  result.held_for = pending;
  if (!pending.empty() && options.force) {
    notice(fmt::format("warning: --force: rebooting while not on the board yet: {} — the board may read a "
                       "half-written file",
                       describe_pending(pending)));
    result.forced = true;
  } else if (!pending.empty()) {
    notice(fmt::format("Ctrl-D held: not on the board yet: {}; pushing the flush", describe_pending(pending)));
    const auto deadline = detail::Clock::now() + options.flush_timeout;
    for (;;) {
      detail::push_drive(options.drive);
      pending = pending_for_board(options.drive, options.journal);
      if (pending.empty()) break;
      if (detail::Clock::now() >= deadline)
        throw DeviceError(fmt::format("{}: flush timeout: still not on the board: {}; no Ctrl-D sent",
                                      options.drive, describe_pending(pending)),
                          exit_code::flush_timeout);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    notice("the drive is flushed: sending Ctrl-D");
  }
  // Interrupt whatever runs and take the board to a known prompt, then Ctrl-B, Ctrl-D from the
  // friendly REPL (a Ctrl-D in the raw REPL would not run code.py/main.py, micropython#2249).
  RawRepl repl(port.fd(), options.repl);
  repl.enter();
  try {
    repl.soft_reboot(options.timeout, &result.transcript);
  } catch (const DeviceError& e) {
    // The reboot itself reset the board off the bus: follow it and see it reboot where it came back.
    if (e.exit_code() != exit_code::board_reset || !options.reconnect) throw;
    notice("the port went away during the reboot; waiting for the board to come back");
    port = options.reconnect();
    result.reconnected = port.path();
    notice("reconnected: " + port.path());
    RawRepl again(port.fd(), options.repl);
    again.enter();
    again.soft_reboot(options.timeout, &result.transcript);
  }
  return result;
}

}  // namespace holdfast::device
