// sys/kernel_lock: OFD (fcntl F_OFD_SETLK[W]) and flock(2) whole-file locks, and a deadline alarm
// that interrupts a blocking lock call in this thread only.
#pragma once

#include <chrono>

namespace holdfast::sys {

// posix: classic fcntl F_SETLK[W] record locks, owned by the process and dropped when it closes
// ANY descriptor of the file. No holdfast backend uses them; probe measures them to show the trap.
enum class KernelLockKind { ofd, flock, posix };

// Locks the whole file open at `fd`. Returns 0 when acquired; -EWOULDBLOCK when another holder
// conflicts and `wait` is false (EAGAIN/EACCES from fcntl are normalised); -EINTR when a blocking
// wait was interrupted by a signal; other -errno values (EINVAL: unsupported here, ENOLCK, EBADF).
int kernel_lock(int fd, KernelLockKind kind, bool exclusive, bool wait) noexcept;

// Unlocks the whole file. Returns 0 or -errno.
int kernel_unlock(int fd, KernelLockKind kind) noexcept;

// While alive, sends this thread a signal at `deadline` and every 5 ms after, so a blocking lock
// call returns EINTR no later than shortly after the deadline. Repeating closes the race where the
// first signal lands just before the thread enters the blocking call.
//
// It uses SIGRTMAX-2 with a no-op handler installed without SA_RESTART. If the application already
// handles or blocks that signal, the alarm is not armed (armed() is false) and callers must poll.
class DeadlineAlarm {
 public:
  explicit DeadlineAlarm(std::chrono::steady_clock::time_point deadline) noexcept;
  ~DeadlineAlarm();
  DeadlineAlarm(const DeadlineAlarm&) = delete;
  DeadlineAlarm& operator=(const DeadlineAlarm&) = delete;
  bool armed() const noexcept { return armed_; }

 private:
  bool armed_ = false;
  void* timer_ = nullptr;  // timer_t
};

}  // namespace holdfast::sys
