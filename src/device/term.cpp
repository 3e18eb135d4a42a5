// device term: an interactive serial terminal with the Ctrl-D guard.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fmt/format.h>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "holdfast/wait.hpp"
#include "sys/file.hpp"
#include "sys/page_cache.hpp"

namespace holdfast::device {

namespace {

// Regular files under `dir` (a board drive is small; bounded anyway).
void walk(const std::string& dir, std::vector<std::string>& out, int depth) {
  if (depth > 8 || out.size() > 10000) return;
  // O_NOATIME: reading a directory must not dirty its inode, or the check itself would keep the
  // drive's metadata "not on the device yet" (relatime updates atime after a change).
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return;
  }
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = dir + "/" + name;
    struct stat st{};
    if (sys::lstat_nothrow(path, st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      walk(path, out, depth + 1);
    } else if (S_ISREG(st.st_mode)) {
      out.push_back(path);
    }
  }
  ::closedir(d);
}

bool under(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

void write_all(int fd, std::string_view data) { sys::write_all(fd, data); }

}  // namespace

namespace detail {
void push_drive(const std::string& drive) noexcept {
  sys::UniqueFd d(sys::open_nothrow(AT_FDCWD, drive, O_RDONLY | O_DIRECTORY));
  if (d) ::syncfs(d.get());
}
}  // namespace detail

std::vector<std::string> pending_for_board(const std::string& drive, const std::string& journal) {
  std::vector<std::string> pending;
  if (drive.empty()) return pending;
  std::vector<std::string> files;
  walk(drive, files, 0);
  for (const auto& f : files) {
    sys::UniqueFd fd(sys::open_nothrow(AT_FDCWD, f, O_RDONLY | O_NONBLOCK));
    sys::PageCacheStat pc;
    if (fd && sys::cachestat_nothrow(fd.get(), pc) == 0 && pc.dirty + pc.writeback > 0) {
      pending.push_back(fmt::format("{} ({} dirty, {} under writeback pages on the host)", f, pc.dirty, pc.writeback));
    }
  }
  std::string jpath = journal;
  if (jpath.empty()) {
    try {
      jpath = default_journal_path();
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): no journal location = no recorded writes
    }
  }
  if (!jpath.empty()) {
    for (const auto& w : journal_read(jpath)) {
      if (!under(w.path, drive)) continue;
      Expected e;
      e.size = w.size;
      e.digests.push_back(w.digest);
      auto o = observe(w.path, e, WaitOptions{});
      if (!o.matched) pending.push_back(fmt::format("{} (recorded write: {})", w.path, o.differs));
    }
  }
  return pending;
}

int run_terminal(Port& port, const TermOptions& options) {
  auto notice = [&](const std::string& s) {
    if (options.on_notice) options.on_notice(s);
  };
  bool holding = false;
  std::chrono::steady_clock::time_point next_check{};
  for (;;) {
    pollfd fds[2] = {{options.in_fd, POLLIN, 0}, {port.fd(), POLLIN, 0}};
    int pr = ::poll(fds, 2, holding ? 100 : 1000);
    if (pr < 0 && errno != EINTR) return 0;
    bool gone = false;
    if ((fds[1].revents & POLLIN) != 0) {
      char buf[4096];
      ssize_t n = ::read(port.fd(), buf, sizeof buf);
      if (n > 0) write_all(options.out_fd, std::string_view(buf, static_cast<size_t>(n)));
      // EIO, or a hung-up tty: reads 0 and polls POLLHUP.
      gone = (n < 0 && errno != EAGAIN && errno != EINTR) || (n == 0 && (fds[1].revents & POLLHUP) != 0);
    } else if ((fds[1].revents & (POLLHUP | POLLERR)) != 0) {
      gone = true;
    }
    if (gone && options.reconnect) {
      notice("the board's port went away; waiting for it to come back");
      try {
        port = options.reconnect();
      } catch (const DeviceError& e) {
        notice(e.what());
        return e.exit_code();
      }
      notice("reconnected: " + port.path());
      continue;
    }
    if (gone) {
      notice("the board's port went away");
      return 0;
    }
    if ((fds[0].revents & (POLLIN | POLLHUP)) != 0) {
      char buf[1024];
      ssize_t n = ::read(options.in_fd, buf, sizeof buf);
      if (n <= 0) return 0;
      std::string out;
      for (ssize_t i = 0; i < n; ++i) {
        auto c = static_cast<unsigned char>(buf[i]);
        if (c == options.exit_key) {
          write_all(port.fd(), out);
          return 0;
        }
        if (c == 0x04 && options.guard) {
          if (holding) {
            notice("second Ctrl-D: sent anyway — the board may read a half-written file");
            holding = false;
            out += '\x04';
            continue;
          }
          auto pending = pending_for_board(options.drive, options.journal);
          if (!pending.empty()) {
            notice(fmt::format("Ctrl-D held: not on the board yet: {}{}; pushing the flush (Ctrl-D again "
                               "sends it anyway)",
                               pending.front(), pending.size() > 1 ? fmt::format(" and {} more", pending.size() - 1) : ""));
            holding = true;
            next_check = std::chrono::steady_clock::now();
            continue;
          }
        }
        out += static_cast<char>(c);
      }
      if (!out.empty()) write_all(port.fd(), out);
    }
    if (holding && std::chrono::steady_clock::now() >= next_check) {
      detail::push_drive(options.drive);
      auto pending = pending_for_board(options.drive, options.journal);
      if (pending.empty()) {
        notice("the drive is flushed: Ctrl-D sent");
        write_all(port.fd(), "\x04");
        holding = false;
      } else {
        next_check = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      }
    }
  }
}

}  // namespace holdfast::device
