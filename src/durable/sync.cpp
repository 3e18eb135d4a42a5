#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "durable/flush.hpp"
#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"

namespace holdfast {

namespace {
// fsync needs a descriptor, not write access: O_RDONLY works for files and directories. Fall back
// to O_PATH-less O_WRONLY for a file we may write but not read.
sys::UniqueFd open_for_sync(const std::string& path) {
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  if (fd == -EACCES) fd = sys::open_nothrow(AT_FDCWD, path, O_WRONLY | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) throw Error(-fd, path, "open");
  return sys::UniqueFd(fd);
}
}  // namespace

void sync_path(const std::string& path) {
  {
    auto fd = open_for_sync(path);
    int r = sys::fsync_nothrow(fd.get());
    if (r < 0) throw Error(-r, path, "fsync");
  }
  std::string dir = sys::dirname_of(path);
  auto dfd = sys::open_or_throw(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY, 0, "open parent directory");
  int r = sys::fsync_nothrow(dfd.get());
  if (r < 0) throw Error(-r, dir, "fsync directory of " + path);
  // vfat, exfat, ext2: the rest of the metadata (allocation table, bitmaps) is in the block
  // device's cache; `wait` checks that cache, so flush it too.
  if (auto err = durable::push_device_of(path); !err.empty()) {
    throw Error(path, "sync block device", err + " (file and directory were flushed)", exit_code::io_error);
  }
}

void sync_filesystem(const std::string& path) {
  auto fd = open_for_sync(path);
  for (;;) {
    if (::syncfs(fd.get()) == 0) return;
    if (errno != EINTR) throw Error(errno, path, "syncfs");
  }
}

}  // namespace holdfast
