// sys/pagecache: the host page cache state of a file range and the calls that push it out.
// (The durable branch adds the same primitives for `wait --flush`; when it lands, device should
// use that one implementation — see docs/DEVICE.md.)
#pragma once

#include <cstdint>

namespace holdfast::sys {

struct PageCacheState {
  uint64_t cached = 0;     // pages in the page cache
  uint64_t dirty = 0;      // dirty (not yet submitted)
  uint64_t writeback = 0;  // under writeback (submitted, not completed)
};

// cachestat(2) (Linux 6.5+, syscall 451) over the whole file. Returns 0 or -errno (-ENOSYS on
// older kernels: then the state is unknown, never "clean").
int cachestat_nothrow(int fd, PageCacheState& state) noexcept;

// sync_file_range(SYNC_FILE_RANGE_WAIT_BEFORE|WRITE|WAIT_AFTER) over the whole file: starts and
// waits for writeback of its data pages. No metadata and no device cache flush: callers fsync too.
// Returns 0 or -errno.
int write_out_range(int fd) noexcept;

}  // namespace holdfast::sys
