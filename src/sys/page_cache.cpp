#include "sys/page_cache.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>

#include "sys/file.hpp"
#include "sys/mountinfo.hpp"

namespace holdfast::sys {

namespace {
// The kernel ABI of cachestat(2): glibc has no wrapper yet.
constexpr long kCachestatSyscall = 451;
struct CachestatRange {
  uint64_t off;
  uint64_t len;  // 0 = to the end of the file
};
struct CachestatResult {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};
}  // namespace

int cachestat_nothrow(int fd, PageCacheStat& out) noexcept {
  CachestatRange range{0, 0};
  CachestatResult cs{};
  if (::syscall(kCachestatSyscall, fd, &range, &cs, 0U) != 0) return -errno;
  out.cached = cs.nr_cache;
  out.dirty = cs.nr_dirty;
  out.writeback = cs.nr_writeback;
  return 0;
}

int wait_in_flight_writeback(int fd) noexcept {
  for (;;) {
    if (::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

int write_out_range(int fd) noexcept {
  for (;;) {
    if (::sync_file_range(fd, 0, 0,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) == 0)
      return 0;
    if (errno != EINTR) return -errno;
  }
}

std::string block_device_path(dev_t dev) {
  if (major(dev) == 0) return {};
  auto uevent = read_file("/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + "/uevent");
  if (!uevent) return {};
  std::string_view text = *uevent;
  constexpr std::string_view kKey = "DEVNAME=";
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.starts_with(kKey)) return "/dev/" + std::string(line.substr(kKey.size()));
    pos = end + 1;
  }
  return {};
}

std::string mount_fstype(dev_t dev) {
  for (const auto& m : read_mountinfo()) {
    if (m.major == major(dev) && m.minor == minor(dev)) return m.fstype;
  }
  return {};
}

}  // namespace holdfast::sys
