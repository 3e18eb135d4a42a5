// Where a kernel lock's holder record and fencing state live: the state directory, never in or
// beside the user's lock file (see internal.hpp and docs/LOCKS.md, "Where records live").
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/hex.hpp"
#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"

namespace holdfast::lock_internal {
namespace {

// The name of a lock file's state: device, inode and birth time (where the filesystem records
// one), so a new file that reuses a deleted file's inode number gets fresh state.
std::string state_key(int fd, const struct stat& st) {
  struct statx sx {};
  uint64_t btime_s = 0;
  uint32_t btime_ns = 0;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_BTIME, &sx) == 0 && (sx.stx_mask & STATX_BTIME) != 0) {
    btime_s = static_cast<uint64_t>(sx.stx_btime.tv_sec);
    btime_ns = sx.stx_btime.tv_nsec;
  }
  return hex(major(st.st_dev)) + "." + hex(minor(st.st_dev)) + "." + hex(st.st_ino) + "." + hex(btime_s) + "." +
         hex(btime_ns);
}

// Creates the state directory (sticky, world-writable like /tmp, so every user who can lock a
// file can keep its state) or checks an existing one. Returns an empty string or why not.
std::string check_directory(const std::string& dir) {
  struct stat st {};
  int rc = sys::lstat_nothrow(dir, st);
  if (rc == -ENOENT) {
    if (::mkdir(dir.c_str(), 01777) == 0) {
      ::chmod(dir.c_str(), 01777);  // mkdir's mode is cut by the umask
    } else if (errno != EEXIST) {
      return dir + ": cannot create state directory: " + std::strerror(errno);
    }
    rc = sys::lstat_nothrow(dir, st);  // what is there now (ours, or a racer's)
  }
  if (rc < 0) return dir + ": " + std::strerror(-rc);
  if (!S_ISDIR(st.st_mode)) return dir + " is not a directory";
  if (st.st_uid != 0 && st.st_uid != ::geteuid()) return dir + " is owned by another user";
  if ((st.st_mode & S_IWOTH) != 0 && (st.st_mode & S_ISVTX) == 0) return dir + " is world-writable without the sticky bit";
  return {};
}

}  // namespace

std::string state_directory() {
  const char* env = std::getenv("HOLDFAST_STATE_DIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/var/tmp/holdfast");
}

std::optional<SideStatePaths> side_state_for(int lock_fd, const struct stat& st, std::string* why) {
  const std::string dir = state_directory();
  if (std::string problem = check_directory(dir); !problem.empty()) {
    *why = problem;
    return std::nullopt;
  }
  const std::string base = dir + "/" + state_key(lock_fd, st);
  SideStatePaths paths;
  paths.fence = base + ".fence";
  paths.record = base + ".holder";
  paths.lock_owner = st.st_uid;
  paths.mode = st.st_mode & 0666;
  // Only someone who may write the lock file anyway may create its state: otherwise any user
  // who can open (and so flock) a file could plant state that its owner would then not trust.
  const uid_t me = ::geteuid();
  paths.may_create = me == 0 || me == st.st_uid || (st.st_mode & S_IWOTH) != 0;
  return paths;
}

int open_state_file(const SideStatePaths& paths, const std::string& file, bool* created, struct stat* out) {
  if (created != nullptr) *created = false;
  constexpr int kFlags = O_RDWR | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK;
  int fd = sys::open_nothrow(AT_FDCWD, file, kFlags);
  if (fd == -ENOENT && paths.may_create) {
    // No O_CREAT on an existing file: in a sticky directory, fs.protected_regular refuses that
    // for another user's file even when we could open it.
    fd = sys::open_nothrow(AT_FDCWD, file, kFlags | O_CREAT | O_EXCL, paths.mode);
    if (fd >= 0) {
      ::fchmod(fd, paths.mode);  // the umask must not narrow who shares the lock
      if (created != nullptr) *created = true;
    } else if (fd == -EEXIST) {
      fd = sys::open_nothrow(AT_FDCWD, file, kFlags);
    }
  }
  if (fd < 0) return fd;
  struct stat st {};
  const uid_t me = ::geteuid();
  if (sys::fstat_nothrow(fd, st) < 0 || !S_ISREG(st.st_mode) ||
      (st.st_uid != 0 && st.st_uid != me && st.st_uid != paths.lock_owner)) {
    // Planted by a user who does not own the lock file: its tokens and record mean nothing.
    ::close(fd);
    return -EPERM;
  }
  if (out != nullptr) *out = st;
  return fd;
}

std::optional<HolderRecord> read_side_record(int fd, const struct stat& st) {
  std::string why;
  const std::string dir = state_directory();
  const std::string file = dir + "/" + state_key(fd, st) + ".holder";
  int rfd = sys::open_nothrow(AT_FDCWD, file, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
  if (rfd < 0) return std::nullopt;
  sys::UniqueFd owned(rfd);
  auto text = sys::pread_all(rfd, kRecordReadLimit);
  if (!text) return std::nullopt;
  return HolderRecord::parse(*text);
}

}  // namespace holdfast::lock_internal
