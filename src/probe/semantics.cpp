// Kernel-lock semantics, measured with real processes: the properties that decide whether a lock
// kind can be used safely (and the POSIX traps that make it hard to), including what ensure and
// `holdfast lock` rely on: the lock survives fork and exec into the command, and closing some
// other descriptor of the file does not drop it (review S3).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::probe_internal {

namespace {

sys::KernelLockKind kind_of(Primitive p) noexcept {
  return p == Primitive::flock ? sys::KernelLockKind::flock
         : p == Primitive::ofd ? sys::KernelLockKind::ofd
                               : sys::KernelLockKind::posix;
}

// Tries an exclusive, non-blocking lock of `kind` on `fd`: 0 if granted, -EWOULDBLOCK if
// refused, other -errno.
int try_lock(Primitive kind, int fd) noexcept {
  int rc;
  do {
    rc = sys::kernel_lock(fd, kind_of(kind), true, false);
  } while (rc == -EINTR);
  return rc;
}

// Puts `from` at descriptor `to` for exec, inheritable (dup2 does not clear FD_CLOEXEC when the
// two are already the same descriptor).
bool place(int from, int to) noexcept {
  if (from == to) return ::fcntl(to, F_SETFD, 0) == 0;
  return ::dup2(from, to) == to;
}

// In a fresh child: open `path` and try the lock. Returns true if refused, false if granted,
// nullopt on any other outcome.
std::optional<bool> refused_in_child(Primitive kind, const std::string& path) {
  pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ::_exit(3);
    int rc = try_lock(kind, fd);
    ::_exit(rc == 0 ? 0 : rc == -EWOULDBLOCK ? 1 : 2);
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

LockSemantics check_semantics(Primitive kind, const std::string& scratch_dir, std::string& error, int& error_number) {
  LockSemantics s;
  const std::string path = scratch_dir + "/semantics-" + std::string(to_string(kind));
  auto open_file = [&]() { return sys::UniqueFd(sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT, 0644)); };

  {  // another process; a second open description in this process
    auto fd1 = open_file();
    if (!fd1) {
      error_number = -fd1.get();
      error = path + ": open: " + std::strerror(error_number);
      return s;
    }
    if (int rc = try_lock(kind, fd1.get()); rc != 0) {
      error_number = -rc;
      error = path + ": lock: " + std::strerror(-rc);
      ::unlink(path.c_str());
      return s;
    }
    s.excludes_other_process = refused_in_child(kind, path);
    auto fd2 = open_file();
    if (fd2) {
      int rc = try_lock(kind, fd2.get());
      if (rc == 0 || rc == -EWOULDBLOCK) s.excludes_same_process = rc != 0;
    }
  }  // both closed: for POSIX, closing either dropped the lock anyway

  {  // closing another descriptor of the same file (holdfast lock and ensure keep several open)
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

  {  // inheritance across exec: what `ensure` and `holdfast lock` hand to the command they run.
     // A child execs /bin/sh with the locked descriptor as fd 3, says so, and waits on stdin.
    auto fd1 = open_file();
    int gate[2] = {-1, -1};
    int ready[2] = {-1, -1};
    if (fd1 && try_lock(kind, fd1.get()) == 0 && ::pipe2(gate, O_CLOEXEC) == 0 && ::pipe2(ready, O_CLOEXEC) == 0) {
      pid_t holder = ::fork();
      if (holder == 0) {
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // probe blocks its stop signals; sh must not
        if (!place(fd1.get(), 3) || !place(gate[0], 0) || !place(ready[1], 1)) ::_exit(126);
        ::execl("/bin/sh", "sh", "-c", "echo ready; read _", static_cast<char*>(nullptr));
        ::_exit(127);
      }
      ::close(gate[0]);
      ::close(ready[1]);
      char c = 0;
      ssize_t n;
      while ((n = ::read(ready[0], &c, 1)) < 0 && errno == EINTR) {
      }
      fd1.reset();
      if (holder > 0 && n == 1) {  // the exec happened and sh runs with fd 3
        auto still = refused_in_child(kind, path);
        if (still) s.survives_exec = *still;
      }
      ::close(gate[1]);
      ::close(ready[0]);
      if (holder > 0) {
        int status;
        while (::waitpid(holder, &status, 0) < 0 && errno == EINTR) {
        }
      }
    } else {
      for (int fd : {gate[0], gate[1], ready[0], ready[1]}) {
        if (fd >= 0) ::close(fd);
      }
    }
  }
  ::unlink(path.c_str());
  return s;
}

std::string semantics_problem(Primitive kind, const LockSemantics& s) {
  if (s.excludes_other_process == false) return "a second process was granted it while held";
  if (kind == Primitive::posix) return "";  // owned by the process: its traps are expected, and shown
  if (s.excludes_same_process == false) return "a second open in the same process was granted it while held";
  if (s.closing_other_fd_drops == true) {
    return "closing another descriptor of the file dropped it (holdfast keeps several open)";
  }
  if (s.inherited_by_child == false) return "a child did not keep it across fork (ensure hands it to the daemon)";
  if (s.survives_exec == false) return "it did not survive exec (ensure and lock hand it to the command they run)";
  return "";
}

bool is_unsupported_errno(int err) noexcept {
  return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == EPERM ||
         err == ENOLCK;
}

bool is_resource_errno(int err) noexcept {
  return err == ENOSPC || err == EDQUOT || err == EMFILE || err == ENFILE || err == ENOMEM || err == EROFS ||
         err == EIO;
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
