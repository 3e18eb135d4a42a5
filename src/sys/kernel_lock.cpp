#include "sys/kernel_lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

namespace holdfast::sys {

int kernel_lock(int fd, KernelLockKind kind, bool exclusive, bool wait) noexcept {
  int rc;
  if (kind != KernelLockKind::flock) {
    struct flock fl {};
    fl.l_type = static_cast<short>(exclusive ? F_WRLCK : F_RDLCK);
    fl.l_whence = SEEK_SET;  // l_start = l_len = 0: the whole file, including future growth
    fl.l_pid = 0;            // required for OFD locks
    if (kind == KernelLockKind::ofd) {
      rc = ::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
    } else {
      rc = ::fcntl(fd, wait ? F_SETLKW : F_SETLK, &fl);
    }
  } else {
    rc = ::flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB));
  }
  if (rc == 0) return 0;
  int err = errno;
  if (!wait && (err == EAGAIN || err == EACCES || err == EWOULDBLOCK)) return -EWOULDBLOCK;
  return -err;
}

int kernel_unlock(int fd, KernelLockKind kind) noexcept {
  int rc;
  if (kind != KernelLockKind::flock) {
    struct flock fl {};
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    rc = ::fcntl(fd, kind == KernelLockKind::ofd ? F_OFD_SETLK : F_SETLK, &fl);
  } else {
    rc = ::flock(fd, LOCK_UN);
  }
  return rc == 0 ? 0 : -errno;
}

namespace {

int alarm_signal() noexcept { return SIGRTMAX - 2; }

void ignore_alarm(int) {}

// Installs the no-op handler once, if nobody else uses the signal. Returns whether it is ours.
bool ensure_handler() noexcept {
  static std::once_flag once;
  static bool ours = false;
  std::call_once(once, [] {
    struct sigaction current {};
    if (::sigaction(alarm_signal(), nullptr, &current) != 0) return;
    if (current.sa_handler == ignore_alarm) {
      ours = true;
      return;
    }
    if (current.sa_handler != SIG_DFL || (current.sa_flags & SA_SIGINFO) != 0) return;
    struct sigaction sa {};
    sa.sa_handler = ignore_alarm;  // no SA_RESTART: the blocking call must return EINTR
    sigemptyset(&sa.sa_mask);
    ours = ::sigaction(alarm_signal(), &sa, nullptr) == 0;
  });
  return ours;
}

bool signal_blocked_here() noexcept {
  sigset_t mask;
  if (::pthread_sigmask(SIG_BLOCK, nullptr, &mask) != 0) return true;
  return sigismember(&mask, alarm_signal()) == 1;
}

}  // namespace

DeadlineAlarm::DeadlineAlarm(std::chrono::steady_clock::time_point deadline) noexcept {
  if (!ensure_handler() || signal_blocked_here()) return;
  struct sigevent sev {};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = alarm_signal();
  sev._sigev_un._tid = static_cast<pid_t>(::syscall(SYS_gettid));
  timer_t timer{};
  // steady_clock is CLOCK_MONOTONIC on Linux, so the deadline converts directly.
  if (::timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) return;
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
  if (ns <= 0) ns = 1;
  struct itimerspec spec {};
  spec.it_value.tv_sec = ns / 1000000000;
  spec.it_value.tv_nsec = ns % 1000000000;
  spec.it_interval.tv_nsec = 5'000'000;
  if (::timer_settime(timer, TIMER_ABSTIME, &spec, nullptr) != 0) {
    ::timer_delete(timer);
    return;
  }
  timer_ = timer;
  armed_ = true;
}

DeadlineAlarm::~DeadlineAlarm() {
  if (armed_) ::timer_delete(static_cast<timer_t>(timer_));
  // A signal already queued is harmless: the handler does nothing.
}

}  // namespace holdfast::sys
