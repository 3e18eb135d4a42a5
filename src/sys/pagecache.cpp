#include "sys/pagecache.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace holdfast::sys {

namespace {
// The kernel ABI (include/uapi/linux/mman.h); glibc 2.36 has no wrapper.
struct CachestatRange {
  uint64_t off;
  uint64_t len;  // 0 = to the end of the file
};
struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};
constexpr long kSysCachestat = 451;
}  // namespace

int cachestat_nothrow(int fd, PageCacheState& state) noexcept {
  CachestatRange range{0, 0};
  Cachestat cs{};
  if (::syscall(kSysCachestat, fd, &range, &cs, 0U) != 0) return -errno;
  state.cached = cs.nr_cache;
  state.dirty = cs.nr_dirty;
  state.writeback = cs.nr_writeback;
  return 0;
}

int write_out_range(int fd) noexcept {
  for (;;) {
    if (::sync_file_range(fd, 0, 0,
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                              SYNC_FILE_RANGE_WAIT_AFTER) == 0)
      return 0;
    if (errno != EINTR) return -errno;
  }
}

}  // namespace holdfast::sys
