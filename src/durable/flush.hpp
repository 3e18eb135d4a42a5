// The host-side flush detector: has a file's content reached its device, or is it still only in
// this host's page cache? This is what a reader on the other side of the device (a USB board
// reading its own flash, a VM reading a disk image, debugfs on the raw image) will see.
#pragma once

#include <sys/stat.h>

#include <optional>
#include <string>

#include "holdfast/digest.hpp"

#include "sys/fd.hpp"

namespace holdfast::durable {

enum class DeviceState {
  on_device,  // no dirty or in-flight page of the file (and, where checked, of its block device)
  pending,    // dirty or under-writeback pages remain: the device does not hold these bytes yet
  memory,     // a memory filesystem (tmpfs, ramfs): the page cache IS the storage
  unknown,    // cannot tell (no cachestat(2)); `detail` says why
};

struct DeviceView {
  DeviceState state = DeviceState::unknown;
  bool writeback_in_flight = false;  // some pages are submitted: waiting for them is event-driven
  std::string detail;                // one line for messages and --json
};

// Judges the file open as `fd` (with `st` its fstat) living at `path`, without changing anything.
// File data: cachestat(2) of the whole file, dirty == 0 && writeback == 0. Metadata: on
// filesystems that keep it in the block device's own cache with no journal to replay it (vfat,
// exfat, ext2, …: the directory entry, the allocation table, the inode), the block device under
// the mount must have no dirty or in-flight page either. On journaled filesystems the metadata is
// committed by the journal and is not checked (documented in docs/DURABLE.md). Never throws;
// problems are described in the result.
class DeviceProbe {
 public:
  // Looks up the filesystem type and block device of `st.st_dev` once.
  explicit DeviceProbe(const struct stat& st);
  DeviceView look(int fd) const;
  // Makes the bytes reach the device now: fsync(fd), fsync of `path`'s directory, and an fsync
  // of the block device where look() checks it. Returns "" or a one-line error (the fsync that
  // failed; never retried).
  std::string push(int fd, const std::string& path) const;
  // Blocks until the writeback already in flight for the file (and the checked device)
  // completes: sync_file_range(SYNC_FILE_RANGE_WAIT_BEFORE), which starts nothing.
  void wait_in_flight(int fd) const;
  // fsync of the block device alone, where look() checks it. Returns "" or a one-line error.
  std::string push_device() const;
  const std::string& fstype() const noexcept { return fstype_; }

 private:
  std::string fstype_;
  std::string device_;       // "/dev/loop0" when the device's cache must be checked
  std::string device_note_;  // why it is not checked, when it is not
  sys::UniqueFd device_fd_;
};

// Size and digest of `path` read with O_DIRECT (the kernel writes the file's dirty range back
// first, then reads from the device). nullopt, with `why` set, where O_DIRECT is unsupported.
std::optional<ContentDigest> direct_digest(const std::string& path, DigestAlg alg, std::string& why);

// fsync of the block device holding `path` when DeviceProbe would check it (a no-op elsewhere,
// or when the device cannot be opened). Returns "" or a one-line error.
std::string push_device_of(const std::string& path);

}  // namespace holdfast::durable
