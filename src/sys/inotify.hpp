// sys/inotify: a thin owner of an inotify descriptor watching directories for changes to names.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "sys/fd.hpp"

namespace holdfast::sys {

class DirWatch {
 public:
  // Events that can mean "the content under a name in this directory changed".
  static constexpr uint32_t kContentEvents = 0x00000002 /*IN_MODIFY*/ | 0x00000004 /*IN_ATTRIB*/ |
                                             0x00000008 /*IN_CLOSE_WRITE*/ | 0x00000080 /*IN_MOVED_TO*/ |
                                             0x00000100 /*IN_CREATE*/ | 0x00000040 /*IN_MOVED_FROM*/ |
                                             0x00000200 /*IN_DELETE*/;

  // An inotify instance (IN_CLOEXEC | IN_NONBLOCK). valid() is false if inotify is unavailable.
  DirWatch() noexcept;
  bool valid() const noexcept { return static_cast<bool>(fd_); }
  // Watches `dir` for kContentEvents. Returns 0 or -errno.
  int add(const std::string& dir) noexcept;
  // Blocks until an event arrives for a name in `names` (any name if empty; always on queue
  // overflow) or until `timeout` passes. Returns true if woken by a relevant event. EINTR is
  // reported as a (harmless, spurious) wake-up.
  bool wait(std::chrono::milliseconds timeout, const std::vector<std::string>& names) noexcept;
  // Removes every watch (inotify_rm_watch), keeping the descriptor. The kernel frees the marks
  // in the background after an SRCU grace period; closing an inotify descriptor that still has
  // marks waits for that grace period instead (measured: 10-15 ms), so a caller that is about to
  // stop needing events calls this early to make its later close (and exit) fast.
  void remove_all() noexcept;

 private:
  bool drain(const std::vector<std::string>& names) noexcept;
  UniqueFd fd_;
  std::vector<int> watches_;
};

}  // namespace holdfast::sys
