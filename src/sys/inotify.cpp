#include "sys/inotify.hpp"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace holdfast::sys {

static_assert(DirWatch::kContentEvents == (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE |
                                           IN_MOVED_FROM | IN_DELETE));

DirWatch::DirWatch() noexcept : fd_(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK)) {}

int DirWatch::add(const std::string& dir) noexcept {
  if (!fd_) return -EBADF;
  int wd = ::inotify_add_watch(fd_.get(), dir.c_str(), kContentEvents | IN_ONLYDIR);
  if (wd < 0) return -errno;
  if (std::find(watches_.begin(), watches_.end(), wd) == watches_.end()) watches_.push_back(wd);
  return 0;
}

void DirWatch::remove_all() noexcept {
  for (int wd : watches_) (void)::inotify_rm_watch(fd_.get(), wd);
  watches_.clear();
}

bool DirWatch::drain(const std::vector<std::string>& names) noexcept {
  alignas(inotify_event) char buf[16384];
  bool relevant = false;
  for (;;) {
    ssize_t n = ::read(fd_.get(), buf, sizeof buf);
    if (n <= 0) break;  // EAGAIN: queue empty
    for (ssize_t off = 0; off < n;) {
      inotify_event ev;
      std::memcpy(&ev, buf + off, sizeof ev);
      if ((ev.mask & IN_Q_OVERFLOW) != 0 || names.empty()) relevant = true;
      if (ev.len > 0) {
        const char* name = buf + off + static_cast<ssize_t>(sizeof ev);
        std::string_view nm(name, ::strnlen(name, ev.len));
        if (std::find(names.begin(), names.end(), nm) != names.end()) relevant = true;
      }
      off += static_cast<ssize_t>(sizeof ev) + static_cast<ssize_t>(ev.len);
    }
  }
  return relevant;
}

bool DirWatch::wait(std::chrono::milliseconds timeout, const std::vector<std::string>& names) noexcept {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    if (!fd_) {
      ::usleep(static_cast<useconds_t>(std::min<int64_t>(left.count(), 1000000) * 1000));
      continue;
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30)));
    if (r < 0) return errno == EINTR;
    if (r > 0 && drain(names)) return true;
  }
}

}  // namespace holdfast::sys
