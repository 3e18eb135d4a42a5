// Kernel-lock semantics, measured with real processes: the properties that decide whether a lock
// kind can be used safely (and the POSIX traps that make it hard to).
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"

namespace holdfast::probe_internal {

namespace {

// Tries an exclusive, non-blocking lock of `kind` on `fd`. Returns 0 if granted, else errno.
int try_lock(Primitive kind, int fd) noexcept {
  int rc;
  if (kind == Primitive::flock) {
    do {
      rc = ::flock(fd, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
  } else {
    struct flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    do {
      rc = ::fcntl(fd, kind == Primitive::ofd ? F_OFD_SETLK : F_SETLK, &fl);
    } while (rc != 0 && errno == EINTR);
  }
  return rc == 0 ? 0 : errno;
}

bool refused(int err) noexcept { return err == EWOULDBLOCK || err == EAGAIN || err == EACCES; }

// In a fresh child: open `path` and try the lock. Returns true if refused, false if granted,
// nullopt on any other outcome.
std::optional<bool> refused_in_child(Primitive kind, const std::string& path) {
  pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ::_exit(3);
    int err = try_lock(kind, fd);
    ::_exit(err == 0 ? 0 : refused(err) ? 1 : 2);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return std::nullopt;
  }
  if (!WIFEXITED(status)) return std::nullopt;
  if (WEXITSTATUS(status) == 0) return false;
  if (WEXITSTATUS(status) == 1) return true;
  return std::nullopt;
}

}  // namespace

LockSemantics check_semantics(Primitive kind, const std::string& scratch_dir, std::string& error) {
  LockSemantics s;
  const std::string path = scratch_dir + "/semantics-" + std::string(to_string(kind));
  auto open_file = [&]() { return sys::UniqueFd(sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT, 0644)); };

  {  // another process; a second open description in this process
    auto fd1 = open_file();
    if (!fd1) {
      error = path + ": open: " + std::strerror(errno);
      return s;
    }
    if (int err = try_lock(kind, fd1.get()); err != 0) {
      error = path + ": lock: " + std::strerror(err);
      return s;
    }
    s.excludes_other_process = refused_in_child(kind, path);
    auto fd2 = open_file();
    if (fd2) {
      int err = try_lock(kind, fd2.get());
      if (err == 0 || refused(err)) s.excludes_same_process = err != 0;
    }
  }  // both closed: for POSIX, closing either dropped the lock anyway

  {  // closing another descriptor of the same file
    auto fd1 = open_file();
    if (fd1 && try_lock(kind, fd1.get()) == 0) {
      auto other = open_file();
      other.reset();
      auto still = refused_in_child(kind, path);
      if (still) s.closing_other_fd_drops = !*still;
    }
  }

  {  // inheritance across fork: the child keeps holding after the parent closes
    auto fd1 = open_file();
    int gate[2];
    if (fd1 && try_lock(kind, fd1.get()) == 0 && ::pipe2(gate, O_CLOEXEC) == 0) {
      pid_t holder = ::fork();
      if (holder == 0) {
        ::close(gate[1]);
        char c;
        while (::read(gate[0], &c, 1) < 0 && errno == EINTR) {
        }
        ::_exit(0);  // fd1 (inherited) closes here
      }
      ::close(gate[0]);
      fd1.reset();
      if (holder > 0) {
        auto still = refused_in_child(kind, path);
        if (still) s.inherited_by_child = *still;
      }
      ::close(gate[1]);
      if (holder > 0) {
        int status;
        while (::waitpid(holder, &status, 0) < 0 && errno == EINTR) {
        }
      }
    }
  }
  ::unlink(path.c_str());
  return s;
}

bool is_unsupported_errno(int err) noexcept {
  return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == EPERM ||
         err == ENOLCK;
}

bool is_loser_errno(Primitive primitive, int err) noexcept {
  switch (primitive) {
    case Primitive::mkdir:
    case Primitive::excl:
    case Primitive::link:
    case Primitive::rename:
      return err == EEXIST;
    case Primitive::flock:
      return err == EWOULDBLOCK;
    case Primitive::ofd:
    case Primitive::posix:
      return err == EAGAIN || err == EACCES;
  }
  return false;
}

}  // namespace holdfast::probe_internal
