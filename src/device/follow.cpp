// Following a board across a reset: its serial port may vanish and come back under another name
// (ttyACM0 → ttyACM1); the USB serial number is what stays, so the board is found again by it.
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fmt/format.h>
#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"

namespace holdfast::device {

namespace {

std::string resolved(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : "";
}

}  // namespace

std::string usb_serial_of_port(const std::string& port, const DiscoveryRoots& roots) {
  const std::string want = resolved(port);
  if (want.empty()) return "";
  for (const auto& b : list_boards(roots)) {
    if (!b.port || b.port->usb_serial.empty()) continue;
    if (resolved(b.port->device) == want || (!b.port->by_id.empty() && resolved(b.port->by_id) == want))
      return b.port->usb_serial;
  }
  return "";
}

Port reopen_by_serial(const std::string& serial, std::chrono::milliseconds timeout, const PortOptions& options,
                      const DiscoveryRoots& roots) {
  const auto deadline = detail::Clock::now() + timeout;
  std::string last;
  for (;;) {
    for (const auto& b : list_boards(roots)) {
      if (!b.port || b.port->usb_serial != serial) continue;
      // A name whose device node is gone (the old one, not yet cleaned up) is not the board.
      if (resolved(b.port->device).empty()) continue;
      try {
        return Port::open(b.port->device, options);
      } catch (const std::exception& e) {
        last = e.what();  // still settling (udev permissions), or busy: retry until the deadline
      }
    }
    if (detail::Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw DeviceError(fmt::format("the board (USB serial {}) reset and its port did not come back within {} ms{}",
                                serial, timeout.count(), last.empty() ? "" : ": " + last),
                    exit_code::board_reset);
}

}  // namespace holdfast::device
