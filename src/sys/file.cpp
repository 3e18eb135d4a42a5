#include "sys/file.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include "holdfast/error.hpp"

namespace holdfast::sys {

int open_nothrow(int dirfd, const std::string& path, int flags, mode_t mode) noexcept {
  for (;;) {
    int fd = ::openat(dirfd, path.c_str(), flags | kBaseOpenFlags, mode);
    if (fd >= 0) return fd;
    if (errno != EINTR) return -errno;
  }
}

UniqueFd open_or_throw(int dirfd, const std::string& path, int flags, mode_t mode,
                       std::string_view context) {
  int fd = open_nothrow(dirfd, path, flags, mode);
  if (fd < 0) throw Error(-fd, path, std::string(context));
  return UniqueFd(fd);
}

int write_all(int fd, std::string_view data) noexcept {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

int pwrite_all(int fd, std::string_view data, off_t offset) noexcept {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    data.remove_prefix(static_cast<size_t>(n));
    offset += n;
  }
  return 0;
}

std::optional<std::string> pread_all(int fd, size_t limit) noexcept {
  std::string out;
  char buf[4096];
  off_t offset = 0;
  while (out.size() < limit) {
    size_t want = std::min(sizeof buf, limit - out.size());
    ssize_t n = ::pread(fd, buf, want, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    offset += n;
  }
  return out;
}

namespace {
// Reads `path` from its start up to `limit` bytes: to the read that returns 0, or, when
// `short_read_is_end` (procfs seq_files), to the first read shorter than asked.
std::optional<std::string> read_whole(const std::string& path, size_t limit, bool short_read_is_end) noexcept {
  int fd = open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY);
  if (fd < 0) {
    errno = -fd;
    return std::nullopt;
  }
  UniqueFd owned(fd);
  std::string out;
  char buf[4096];
  while (out.size() < limit) {
    const size_t want = std::min(sizeof buf, limit - out.size());
    ssize_t n = ::read(fd, buf, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (short_read_is_end && static_cast<size_t>(n) < want) break;
  }
  return out;
}
}  // namespace

std::optional<std::string> read_file(const std::string& path, size_t limit) noexcept {
  return read_whole(path, limit, false);
}

std::optional<std::string> read_proc_file(const std::string& path, size_t limit) noexcept {
  return read_whole(path, limit, true);  // see the header: single-record seq_files only
}

int fstat_nothrow(int fd, struct stat& st) noexcept { return ::fstat(fd, &st) == 0 ? 0 : -errno; }
int stat_nothrow(const std::string& path, struct stat& st) noexcept {
  return ::stat(path.c_str(), &st) == 0 ? 0 : -errno;
}
int lstat_nothrow(const std::string& path, struct stat& st) noexcept {
  return ::lstat(path.c_str(), &st) == 0 ? 0 : -errno;
}

int fsync_nothrow(int fd) noexcept {
  // Not retried on EIO: see the header. EINTR cannot lose data, so it is retried.
  for (;;) {
    if (::fsync(fd) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

std::string dirname_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string basename_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

uint64_t random_u64() noexcept {
  uint64_t v = 0;
  auto* p = reinterpret_cast<char*>(&v);
  size_t got = 0;
  while (got < sizeof v) {
    ssize_t n = ::getrandom(p + got, sizeof v - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // getrandom cannot fail on Linux >= 3.17 once the pool is initialised; fall back to a
      // clock-derived value rather than abort, since uniqueness (not secrecy) is what we need.
      return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
             (static_cast<uint64_t>(::getpid()) << 32);
    }
    got += static_cast<size_t>(n);
  }
  return v;
}

}  // namespace holdfast::sys
