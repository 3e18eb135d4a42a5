#include "lock/fence.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>

#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "sys/file.hpp"

namespace holdfast::fence {
namespace {

constexpr size_t kEpochOffset = 0;
constexpr size_t kEpochSize = 96;
constexpr size_t kCounterOffset = 96;
constexpr size_t kCounterSize = 32;
constexpr uint64_t kCounterMax = 0xffffffffULL;

uint64_t host_hash() {
  // Only needs to tell hosts apart, not resist attack.
  return std::hash<std::string>{}(this_host());
}

std::string padded(std::string text, size_t size) {
  text.resize(size - 1, ' ');
  text.push_back('\n');
  return text;
}

struct State {
  bool epoch_valid = false;
  uint64_t epoch = 0;
  std::string boot_id;
  uint64_t host = 0;
  bool counter_valid = false;
  uint64_t counter_epoch = 0;
  uint64_t counter = 0;
};

State parse(const std::string& bytes) {
  State s;
  if (bytes.size() >= kEpochSize) {
    char boot[64] = {};
    uint64_t epoch = 0, host = 0;
    if (std::sscanf(bytes.c_str(), "E %16" SCNx64 " %63s %16" SCNx64, &epoch, boot, &host) == 3 && epoch > 0) {
      s.epoch_valid = true;
      s.epoch = epoch;
      s.boot_id = boot;
      s.host = host;
    }
  }
  if (bytes.size() >= kCounterOffset + kCounterSize) {
    uint64_t epoch = 0, counter = 0;
    if (std::sscanf(bytes.c_str() + kCounterOffset, "C %16" SCNx64 " %8" SCNx64, &epoch, &counter) == 2) {
      s.counter_valid = true;
      s.counter_epoch = epoch;
      s.counter = counter;
    }
  }
  return s;
}

uint64_t unix_seconds() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

}  // namespace

std::string sidecar_path(const std::string& lock_path) { return lock_path + ".fence"; }

FenceFile FenceFile::open(const std::string& lock_path, int extra_open_flags) {
  std::string path = sidecar_path(lock_path);
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT | O_EXCL | O_NOCTTY | extra_open_flags, 0644);
  bool created = fd >= 0;
  if (fd == -EEXIST) fd = sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_NOCTTY | extra_open_flags);
  if (fd < 0) throw Error(-fd, path, "cannot open fencing-token file");
  return FenceFile(std::move(path), sys::UniqueFd(fd), created);
}

uint64_t FenceFile::next() {
  auto bytes = sys::pread_all(fd_.get(), kEpochSize + kCounterSize);
  if (!bytes) throw Error(errno, path_, "cannot read fencing-token file");
  State s = parse(*bytes);
  if (!bytes->empty() && !s.epoch_valid) {
    // The durable region was written with fdatasync; if it is unreadable we cannot know which
    // tokens were issued, and guessing could hand out a smaller one. Fail closed.
    throw Error(path_, "fencing-token file is corrupt",
                "remove it only when no holder with an older token can still act", exit_code::data);
  }
  const bool same_boot = s.epoch_valid && s.boot_id == this_boot_id() && s.host == host_hash();
  const bool counter_ok = s.counter_valid && s.counter_epoch == s.epoch && s.counter < kCounterMax;
  uint64_t epoch = s.epoch;
  uint64_t counter = 0;
  if (same_boot && counter_ok) {
    counter = s.counter + 1;
  } else {
    // New boot, another host, lost counter or exhausted counter: move to a new epoch, durably,
    // before any token of it is handed out.
    epoch = std::max(s.epoch + 1, unix_seconds());
    if (epoch > kCounterMax) epoch = s.epoch + 1;  // after 2106: keep strictly increasing
    char line[kEpochSize + 1];
    std::snprintf(line, sizeof line, "E %016" PRIx64 " %s %016" PRIx64, epoch, this_boot_id().c_str(), host_hash());
    if (int rc = sys::pwrite_all(fd_.get(), padded(line, kEpochSize), kEpochOffset); rc < 0) {
      throw Error(-rc, path_, "cannot write fencing epoch");
    }
    if (::fdatasync(fd_.get()) != 0) throw Error(errno, path_, "cannot sync fencing epoch");
    if (created_ || bytes->empty()) {
      // The file's directory entry must survive a crash too, or the epoch would restart.
      sys::UniqueFd dir(sys::open_nothrow(AT_FDCWD, sys::dirname_of(path_), O_RDONLY | O_DIRECTORY));
      if (dir && sys::fsync_nothrow(dir.get()) < 0) throw Error(errno, sys::dirname_of(path_), "cannot sync directory");
      created_ = false;
    }
    counter = 1;
  }
  char line[kCounterSize + 1];
  std::snprintf(line, sizeof line, "C %016" PRIx64 " %08" PRIx64, epoch, counter);
  if (int rc = sys::pwrite_all(fd_.get(), padded(line, kCounterSize), kCounterOffset); rc < 0) {
    throw Error(-rc, path_, "cannot write fencing counter");
  }
  return (epoch << 32) | counter;
}

uint64_t FenceFile::current() const {
  auto bytes = sys::pread_all(fd_.get(), kEpochSize + kCounterSize);
  if (!bytes) return 0;
  State s = parse(*bytes);
  if (!s.epoch_valid || !s.counter_valid || s.counter_epoch != s.epoch) return 0;
  return (s.epoch << 32) | s.counter;
}

}  // namespace holdfast::fence
