// Reading a lock without taking it: the record in the file, and the kernel's own view from
// /proc/locks (the same source lslocks(8) uses).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstdio>
#include <sstream>

#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"

namespace holdfast {
namespace {

// The kernel locks currently granted (not waited for) on inode `st`, as "KIND MODE" strings.
std::vector<std::string> kernel_locks_on(const struct stat& st) {
  std::vector<std::string> kinds;
  auto text = sys::read_file("/proc/locks", 16 << 20);
  if (!text) return kinds;
  char want[64];
  std::snprintf(want, sizeof want, "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                static_cast<unsigned long long>(st.st_ino));
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    // "N: KIND ADVISORY MODE PID MAJ:MIN:INO START END"; waiters have "->" after "N:".
    std::istringstream fields(line);
    std::string id, kind, advisory, mode, pid, dev;
    fields >> id >> kind;
    if (kind == "->") continue;
    fields >> advisory >> mode >> pid >> dev;
    if (dev == want) kinds.push_back(kind + " " + mode);
  }
  return kinds;
}

}  // namespace

std::optional<HolderRecord> read_holder_record(const std::string& path) {
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  if (fd == -ENOENT) return std::nullopt;
  if (fd < 0) throw Error(-fd, path, "cannot read holder record");
  sys::UniqueFd owned(fd);
  auto text = sys::pread_all(fd, size_t{256} * 1024);
  if (!text) throw Error(errno, path, "cannot read holder record");
  return HolderRecord::parse(*text);
}

HolderInfo inspect_holder(const std::string& path) {
  HolderInfo info;
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  if (fd == -ENOENT) {
    info.state = HolderState::free;
    info.reason = "no lock file";
    return info;
  }
  if (fd < 0) {
    if (fd == -EISDIR) throw Error(path, "cannot inspect lock", "it is a directory", exit_code::cant_create);
    throw Error(-fd, path, "cannot inspect lock");
  }
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) < 0) throw Error(errno, path, "cannot stat lock file");
  if (S_ISDIR(st.st_mode)) throw Error(path, "cannot inspect lock", "it is a directory", exit_code::cant_create);
  auto text = sys::pread_all(fd, size_t{256} * 1024);
  if (!text) throw Error(errno, path, "cannot read holder record");
  info.record = HolderRecord::parse(*text);
  info.record_corrupt = !info.record && !text->empty();
  info.kernel_lock_kinds = kernel_locks_on(st);
  info.kernel_lock_held = !info.kernel_lock_kinds.empty();
  info.backend = info.record ? info.record->backend : Backend::ofd;

  const bool dotlock = info.record && (info.backend == Backend::excl || info.backend == Backend::link);
  if (dotlock) {
    auto [state, reason] = lock_internal::judge_dotlock(path);
    info.state = state;
    info.reason = reason;
  } else if (info.kernel_lock_held) {
    info.state = HolderState::held;
    info.reason = "kernel lock held (" + info.kernel_lock_kinds.front() + ")";
  } else if (info.record_corrupt) {
    // Without a kernel lock this is either a free kernel-lock file with a damaged record or a
    // dotlock whose record is unreadable; the latter must be treated as held.
    info.state = HolderState::held;
    info.reason = "record is corrupt and no kernel lock is held on it; treated as held (fail closed)";
  } else {
    info.state = HolderState::free;
    info.reason = info.record ? "no kernel lock held; the record is the last holder's" : "no kernel lock held";
  }
  return info;
}

}  // namespace holdfast
