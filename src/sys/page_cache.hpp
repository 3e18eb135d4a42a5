// sys/page_cache: what the kernel's page cache holds for a file, and which block device and
// filesystem type lie under it. Syscalls and /proc, /sys parsing only; the meaning ("have the
// bytes reached the device?") is decided in src/durable/flush.cpp.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace holdfast::sys {

// Page counts from cachestat(2) (Linux 6.5+) over a whole file.
struct PageCacheStat {
  uint64_t cached = 0;
  uint64_t dirty = 0;      // modified in memory, not yet submitted to the device
  uint64_t writeback = 0;  // submitted, not yet completed by the device
};

// cachestat(2) on `fd` for the whole file (works on regular files and block devices). Returns 0,
// or -errno: -ENOSYS on kernels before 6.5 (or where seccomp forbids it), -EBADF, -EOPNOTSUPP for
// hugetlbfs.
int cachestat_nothrow(int fd, PageCacheStat& out) noexcept;

// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE): blocks until the writeback already in
// flight for `fd` completes; starts none and writes no metadata. Returns 0 or -errno.
int wait_in_flight_writeback(int fd) noexcept;

// sync_file_range(SYNC_FILE_RANGE_WAIT_BEFORE|WRITE|WAIT_AFTER) over the whole file: starts and
// waits for writeback of its data pages. No metadata and no device cache flush: callers fsync too.
// Returns 0 or -errno.
int write_out_range(int fd) noexcept;

// "/dev/NAME" for the block device numbered `dev` (from /sys/dev/block/MAJ:MIN/uevent), or empty
// when `dev` is not a block device (major 0: tmpfs, FUSE, NFS, overlayfs, btrfs subvolumes).
std::string block_device_path(dev_t dev);

// The filesystem type ("ext2", "vfat", "tmpfs", "fuse.faultfs" …) of the mount whose device
// number is `dev`, from /proc/self/mountinfo; empty if not found.
std::string mount_fstype(dev_t dev);

}  // namespace holdfast::sys
