// The state directory: instance names, paths, private-directory checks, lock enforcement, and
// the OFD lock helpers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/probe.hpp"
#include "sys/file.hpp"

namespace holdfast {

using ensure_detail::Paths;

void validate_instance_name(std::string_view name) {
  auto bad = [&](const std::string& why) {
    return Error(std::string(name), "invalid instance name", why, exit_code::usage);
  };
  if (name.empty()) throw bad("empty");
  if (name.size() > 64) throw bad("longer than 64 characters");
  if (name.front() == '.') throw bad("must not start with '.'");
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) throw bad("only A-Z a-z 0-9 . _ - are allowed");
  }
}

namespace {

// Creates `dir` (0700) if missing; with `parents`, creates missing parents too (0755 as mkdir -p).
void make_dir(const std::string& dir, bool parents) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) throw Error(ENOTDIR, dir, "state directory");
    return;
  }
  if (errno != ENOENT) throw Error(errno, dir, "state directory");
  if (parents) {
    auto parent = sys::dirname_of(dir);
    if (parent != dir && parent != "." && parent != "/") make_dir(parent, true);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw Error(errno, dir, "cannot create state directory");
  }
}

// A default state directory must be ours alone: a directory another user controls could be used
// to feed us forged records or swap lock files.
void check_private_dir(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw Error(errno, dir, "state directory");
  if (!S_ISDIR(st.st_mode)) {
    throw Error(dir, "unsafe state directory", "not a directory (symlink?)", exit_code::no_perm);
  }
  if (st.st_uid != ::geteuid()) {
    throw Error(dir, "unsafe state directory",
                "owned by uid " + std::to_string(st.st_uid) + ", not " + std::to_string(::geteuid()),
                exit_code::no_perm);
  }
  if ((st.st_mode & 022) != 0) {
    throw Error(dir, "unsafe state directory", "writable by group or others", exit_code::no_perm);
  }
}

}  // namespace

std::string default_state_dir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string dir;
  if (xdg != nullptr && *xdg == '/') {
    dir = std::string(xdg) + "/holdfast";
  } else if (::geteuid() == 0) {
    dir = "/run/holdfast";
  } else {
    dir = "/tmp/holdfast-" + std::to_string(::geteuid());
  }
  make_dir(dir, false);
  check_private_dir(dir);
  return dir;
}

std::string resolve_state_dir(const std::string& dir) {
  if (dir.empty()) return default_state_dir();
  // Absolute: the record, log and NOTIFY_SOCKET paths must survive a daemon's chdir.
  std::string abs = dir;
  if (abs.front() != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) == nullptr) throw Error(errno, dir, "cannot resolve state directory");
    abs = std::string(cwd) + "/" + dir;
  }
  while (abs.size() > 1 && abs.back() == '/') abs.pop_back();
  make_dir(abs, true);
  return abs;
}

}  // namespace holdfast

namespace holdfast::ensure_detail {


Paths paths_for(const std::string& dir, const std::string& name) {
  Paths p;
  p.dir = dir;
  p.name = name;
  std::string base = dir + "/" + name;
  p.lock = base + ".lock";
  p.spawn_lock = base + ".spawn.lock";
  p.record = base + ".json";
  p.log = base + ".log";
  p.notify = base + ".notify";
  return p;
}

void require_enforced_locks(const std::string& dir) {
  KernelLockVerdict v = kernel_lock_verdict(dir);
  if (!v.tested || v.ofd_excludes) return;
  throw Error(dir, "refusing state directory",
              "OFD locks are accepted but not enforced on this " + v.filesystem +
                  " filesystem, so several instances could start; use a local state directory",
              exit_code::unavailable);
}

sys::UniqueFd open_lock_file(const std::string& path) {
  return sys::open_or_throw(AT_FDCWD, path, O_RDWR | O_CREAT | O_NOCTTY, 0644, "cannot open lock file");
}

int ofd_try_lock(int fd) noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  for (;;) {
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return 0;
    if (errno == EINTR) continue;
    return (errno == EAGAIN || errno == EACCES) ? -EAGAIN : -errno;
  }
}

int ofd_held_elsewhere(int fd) noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
  return fl.l_type == F_UNLCK ? 0 : 1;
}

bool lock_held(const std::string& path) {
  // GETLK needs no write access, so a read-only open serves status for any reader.
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY);
  for (int attempt = 0; fd == -ESTALE && attempt < 5; ++attempt) {  // renamed over on NFS: look up again
    fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY);
  }
  if (fd == -ENOENT) return false;
  if (fd < 0) throw Error(-fd, path, "cannot open lock file");
  sys::UniqueFd owned(fd);
  int held = ofd_held_elsewhere(fd);
  if (held < 0) throw Error(-held, path, "cannot test lock (F_OFD_GETLK)");
  return held == 1;
}

}  // namespace holdfast::ensure_detail
