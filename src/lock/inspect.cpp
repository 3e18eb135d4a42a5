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
#include "lock/shm.hpp"
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

// Opens `path` to read it without changing it: O_NONBLOCK (a FIFO must not block us), and
// O_NOATIME where we may use it (the owner or root), so inspecting leaves even atime alone.
int open_for_inspection(const std::string& path) {
  constexpr int kFlags = O_RDONLY | O_NOCTTY | O_NONBLOCK;
  int fd = sys::open_nothrow(AT_FDCWD, path, kFlags | O_NOATIME);
  if (fd == -EPERM) fd = sys::open_nothrow(AT_FDCWD, path, kFlags);
  return fd;
}

// A dotlock's record is the file itself. Anything else (a user's file that is only locked by a
// kernel lock) is not read past its first bytes. `corrupt`: the file looks like a damaged
// dotlock — a holdfast record that does not parse, or other content beside a dotlock's fence
// file (a user's file has no PATH.fence; a dotlock that was ever granted has).
std::optional<HolderRecord> read_file_record(const std::string& path, int fd, const struct stat& st, bool& corrupt) {
  corrupt = false;
  if (!S_ISREG(st.st_mode) || st.st_size == 0) return std::nullopt;
  auto head = sys::pread_all(fd, 12);
  if (!head) throw Error(errno, path, "cannot read holder record");
  if (head->rfind("{\"holdfast\":", 0) != 0) {
    struct stat fence {};
    corrupt = sys::lstat_nothrow(fence::sidecar_path(path), fence) == 0;
    return std::nullopt;
  }
  auto text = sys::pread_all(fd, kRecordReadLimit);
  if (!text) throw Error(errno, path, "cannot read holder record");
  auto record = HolderRecord::parse(*text);
  corrupt = !record;
  return record;
}

bool is_dotlock(Backend b) { return b == Backend::excl || b == Backend::link; }

}  // namespace

std::optional<HolderRecord> read_holder_record(const std::string& path) {
  int fd = open_for_inspection(path);
  if (fd == -ENOENT) return std::nullopt;
  if (fd < 0) throw Error(-fd, path, "cannot read holder record");
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) < 0) throw Error(errno, path, "cannot stat lock file");
  bool corrupt = false;
  auto in_file = read_file_record(path, fd, st, corrupt);
  if (in_file && is_dotlock(in_file->backend)) return in_file;
  if (auto shm = lock_internal::inspect_shm(fd, st); shm && shm->record && shm->exclusive_held) return shm->record;
  if (auto side = lock_internal::read_side_record(fd, st)) return side;
  if (auto shm = lock_internal::inspect_shm(fd, st); shm && shm->record) return shm->record;
  return in_file;  // a record an older holdfast wrote into a kernel-lock file, if any
}

HolderInfo inspect_holder(const std::string& path) {
  HolderInfo info;
  int fd = open_for_inspection(path);
  if (fd == -ENOENT) {
    info.state = HolderState::free;
    info.reason = "no lock file";
    return info;
  }
  if (fd < 0) throw Error(-fd, path, "cannot inspect lock");
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) < 0) throw Error(errno, path, "cannot stat lock file");
  bool corrupt = false;
  auto in_file = read_file_record(path, fd, st, corrupt);
  info.kernel_lock_kinds = kernel_locks_on(st);
  info.kernel_lock_held = !info.kernel_lock_kinds.empty();

  if (in_file && is_dotlock(in_file->backend)) {
    info.record = in_file;
    info.backend = in_file->backend;
    auto [state, reason] = lock_internal::judge_dotlock(path);
    info.state = state;
    info.reason = reason;
    return info;
  }
  if (lock_internal::describe_shm(fd, st, info)) return info;
  info.record = lock_internal::read_side_record(fd, st);
  if (!info.record) info.record = in_file;
  if (info.record) info.backend = info.record->backend;
  if (info.kernel_lock_held) {
    info.state = HolderState::held;
    info.reason = "kernel lock held (" + info.kernel_lock_kinds.front() + ")";
    if (info.kernel_lock_kinds.front().rfind("FLOCK", 0) == 0) info.backend = Backend::flock;
    else if (info.kernel_lock_kinds.front().rfind("OFDLCK", 0) == 0) info.backend = Backend::ofd;
  } else if (corrupt && !info.record) {
    // A damaged holdfast record without a kernel lock: an unreadable dotlock, held (fail closed).
    info.record_corrupt = true;
    info.state = HolderState::held;
    info.reason = "record is corrupt and no kernel lock is held on it; treated as held (fail closed)";
  } else {
    info.state = HolderState::free;
    info.reason = info.record ? "no kernel lock held; the record is the last holder's" : "no kernel lock held";
  }
  return info;
}

}  // namespace holdfast
