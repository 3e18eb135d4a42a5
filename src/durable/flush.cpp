#include "durable/flush.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <system_error>
#include <fmt/format.h>

#include "sys/file.hpp"
#include "sys/page_cache.hpp"

namespace holdfast::durable {

namespace {

std::string message(int err) { return std::generic_category().message(err); }

bool memory_fs(const std::string& type) { return type == "tmpfs" || type == "ramfs" || type == "devtmpfs"; }

// Filesystems whose metadata (directory entries, allocation tables, inodes) sits in the block
// device's page cache until that cache is written back, with no journal: what a raw reader of the
// device sees is exactly what has been written back.
bool metadata_in_device_cache(const std::string& type) {
  static constexpr std::array<std::string_view, 9> kTypes{"vfat", "msdos", "fat", "exfat", "ext2",
                                                          "minix", "hfs", "hfsplus", "udf"};
  for (auto t : kTypes) {
    if (type == t) return true;
  }
  return false;
}

}  // namespace

DeviceProbe::DeviceProbe(const struct stat& st) : fstype_(sys::mount_fstype(st.st_dev)) {
  if (!metadata_in_device_cache(fstype_)) {
    device_note_ = fstype_.empty() ? "metadata not checked (filesystem type unknown)"
                                   : fmt::format("metadata not checked ({} keeps it in its journal or its server)", fstype_);
    return;
  }
  std::string dev = sys::block_device_path(st.st_dev);
  if (dev.empty()) {
    device_note_ = fmt::format("metadata not checked (no block device under this {} mount)", fstype_);
    return;
  }
  int fd = sys::open_nothrow(AT_FDCWD, dev, O_RDONLY | O_NONBLOCK);
  if (fd < 0) {
    device_note_ = fmt::format("metadata not checked (cannot open {}: {})", dev, message(-fd));
    return;
  }
  device_fd_.reset(fd);
  device_ = dev;
}

DeviceView DeviceProbe::look(int fd) const {
  DeviceView v;
  if (memory_fs(fstype_)) {
    v.state = DeviceState::memory;
    v.detail = fmt::format("{}: the page cache is the storage", fstype_);
    return v;
  }
  sys::PageCacheStat file;
  if (int r = sys::cachestat_nothrow(fd, file); r < 0) {
    v.detail = fmt::format("cannot tell whether the bytes reached the device: cachestat(2): {}", message(-r));
    return v;
  }
  sys::PageCacheStat dev;
  if (device_fd_) {
    if (int r = sys::cachestat_nothrow(device_fd_.get(), dev); r < 0) {
      v.detail = fmt::format("cannot tell whether {}'s metadata reached it: cachestat(2): {}", device_, message(-r));
      return v;
    }
  }
  v.writeback_in_flight = file.writeback + dev.writeback > 0;
  bool clean = file.dirty + file.writeback + dev.dirty + dev.writeback == 0;
  v.state = clean ? DeviceState::on_device : DeviceState::pending;
  std::string where = device_fd_ ? fmt::format("; {}: {} dirty, {} under writeback", device_, dev.dirty, dev.writeback)
                                 : "; " + device_note_;
  v.detail = clean ? fmt::format("on the device (file pages clean{})", where)
                   : fmt::format("not on the device yet: {} dirty, {} under writeback of the file's pages{}", file.dirty,
                                 file.writeback, where);
  return v;
}

std::string DeviceProbe::push(int fd, const std::string& path) const {
  if (memory_fs(fstype_)) return {};
  if (int r = sys::fsync_nothrow(fd); r < 0) return fmt::format("fsync: {}", message(-r));
  std::string dir = sys::dirname_of(path);
  int dfd = sys::open_nothrow(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY);
  if (dfd < 0) return fmt::format("open directory {}: {}", dir, message(-dfd));
  sys::UniqueFd owned(dfd);
  if (int r = sys::fsync_nothrow(dfd); r < 0) return fmt::format("fsync directory {}: {}", dir, message(-r));
  return push_device();
}

void DeviceProbe::wait_in_flight(int fd) const {
  (void)sys::wait_in_flight_writeback(fd);
  if (device_fd_) (void)sys::wait_in_flight_writeback(device_fd_.get());
}

std::optional<ContentDigest> direct_digest(const std::string& path, DigestAlg alg, std::string& why) {
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_DIRECT);
  if (fd < 0) {
    why = fmt::format("open with O_DIRECT: {}", message(-fd));
    return std::nullopt;
  }
  sys::UniqueFd owned(fd);
  constexpr size_t kAlign = 4096;
  constexpr size_t kChunk = size_t{1} << 20;
  std::unique_ptr<char, decltype(&::free)> buf(static_cast<char*>(::aligned_alloc(kAlign, kChunk)), &::free);
  if (!buf) {
    why = "out of memory";
    return std::nullopt;
  }
  Hasher h(alg);
  uint64_t size = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.get(), kChunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      why = fmt::format("O_DIRECT read: {}", message(errno));
      return std::nullopt;
    }
    if (n == 0) break;
    h.update(std::string_view(buf.get(), static_cast<size_t>(n)));
    size += static_cast<uint64_t>(n);
  }
  return ContentDigest{size, h.finish()};
}

std::string DeviceProbe::push_device() const {
  if (!device_fd_) return {};
  if (int r = sys::fsync_nothrow(device_fd_.get()); r < 0) return fmt::format("fsync {}: {}", device_, message(-r));
  return {};
}

std::string push_device_of(const std::string& path) {
  struct stat st {};
  if (sys::stat_nothrow(path, st) != 0) return {};
  return DeviceProbe(st).push_device();
}

}  // namespace holdfast::durable
