// HolderWatch: a dotlock waiter wakes when its holder exits or the lock's name is released,
// instead of on the next poll (internal.hpp). Recovery after a holder's SIGKILL is then the time
// to judge and reclaim, not up to a poll interval.
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string>

#include "lock/internal.hpp"
#include "sys/process.hpp"

namespace holdfast::lock_internal {
namespace {

// One inotify instance per thread, kept until the thread exits: closing an instance waits for
// an SRCU grace period (tens of ms), which would land on the waiter's acquire. Watches are
// added and removed per wait (removal is asynchronous in the kernel). A thread waits for one
// lock at a time, so it never reads another wait's events. A forked child opens its own (its
// inherited copy is shared with the parent's thread).
class ThreadInotify {
 public:
  ThreadInotify() = default;
  ~ThreadInotify() {
    if (fd_ >= 0) ::close(fd_);
  }
  ThreadInotify(const ThreadInotify&) = delete;
  ThreadInotify& operator=(const ThreadInotify&) = delete;
  int fd() noexcept {
    const pid_t self = sys::current_pid();
    if (fd_ >= 0 && pid_ != self) {
      ::close(fd_);  // the parent's instance: dropping our reference costs no grace period
      fd_ = -1;
    }
    if (fd_ < 0) {
      fd_ = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
      pid_ = self;
    }
    return fd_;
  }

 private:
  int fd_ = -1;
  pid_t pid_ = 0;
};

thread_local ThreadInotify t_inotify;

constexpr uint32_t kReleaseEvents = IN_MOVED_FROM | IN_DELETE;
constexpr size_t kMaxWatchedHolders = 8;

}  // namespace

HolderWatch::~HolderWatch() {
  if (watch_ >= 0 && inotify_fd_ >= 0) ::inotify_rm_watch(inotify_fd_, watch_);
}

bool HolderWatch::relevant_events() noexcept {
  alignas(struct inotify_event) char buf[4096];
  bool relevant = false;
  for (;;) {
    const ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
      if ((ev->mask & IN_Q_OVERFLOW) != 0) relevant = true;
      if (ev->wd == watch_ && (ev->mask & kReleaseEvents) != 0 && ev->len > 0 && name_ == ev->name) relevant = true;
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
    }
  }
  return relevant;
}

bool HolderWatch::sleep(const WaitSpec& wait, int& attempt, const std::vector<pid_t>& live_holders) {
  auto delay = poll_delay(wait, attempt);
  if (!delay) return false;
  if (!armed_) {
    armed_ = true;
    inotify_fd_ = t_inotify.fd();
    if (inotify_fd_ >= 0) {
      const std::string dir = "/proc/self/fd/" + std::to_string(dir_fd_);
      watch_ = ::inotify_add_watch(inotify_fd_, dir.c_str(), kReleaseEvents | IN_ONLYDIR);
      if (watch_ >= 0) {
        relevant_events();  // stale events of earlier waits on this thread
        return true;        // judge again now that the watch is in place
      }
    }
  }
  struct pollfd fds[1 + kMaxWatchedHolders];
  sys::UniqueFd pidfds[kMaxWatchedHolders];
  nfds_t n = 0;
  if (watch_ >= 0) fds[n++] = {inotify_fd_, POLLIN, 0};
  size_t holders = 0;
  for (pid_t pid : live_holders) {
    if (holders == kMaxWatchedHolders) break;
    const int fd = sys::pidfd_open_nothrow(pid);
    if (fd == -ESRCH) return true;  // exited since the judgment: judge again at once
    if (fd < 0) continue;           // the poll interval bounds the wait
    pidfds[holders++].reset(fd);
    fds[n++] = {fd, POLLIN, 0};
  }
  // A pidfd is readable once its process has exited (a zombie counts: it proves death too).
  const auto until = Clock::now() + *delay;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - Clock::now());
    if (left.count() <= 0) return true;
    struct timespec ts {};
    ts.tv_sec = static_cast<time_t>(left.count() / 1000000000);
    ts.tv_nsec = static_cast<long>(left.count() % 1000000000);
    const int rc = ::ppoll(fds, n, &ts, nullptr);
    if (rc <= 0) return true;  // interval over, or a signal: judge again
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd != inotify_fd_ || watch_ < 0) return true;  // a holder exited
      if ((fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0 || relevant_events()) return true;
    }
  }
}

}  // namespace holdfast::lock_internal
