#include "sys/spawn.hpp"

#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/syscall.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>

#include "sys/process.hpp"

namespace holdfast::sys {

namespace {

constexpr size_t kMaxMappings = 16;

// What the child reports on the pipe when a step fails: the step and errno.
struct Report {
  int step;  // >= 0: descriptor `step` could not be set up; < 0: one of Step
  int err;
};
enum Step : int {
  kStepReportFd = -1,
  kStepSession = -2,
  kStepChdir = -3,
  kStepSetgroups = -4,
  kStepSetgid = -5,
  kStepSetuid = -6,
  kStepDeathSignal = -7,
  kStepExec = -8,
};

std::string step_name(int step) {
  switch (step) {
    case kStepReportFd: return "report descriptor";
    case kStepSession: return "setsid/setpgid";
    case kStepChdir: return "chdir";
    case kStepSetgroups: return "setgroups";
    case kStepSetgid: return "setgid";
    case kStepSetuid: return "setuid";
    case kStepDeathSignal: return "PR_SET_PDEATHSIG";
    case kStepExec: return "exec";
    default: return "descriptor " + std::to_string(step);
  }
}

int exit_for(int step, int err) {
  if (step == kStepExec) {
    if (err == ENOENT) return exit_code::not_found;
    if (err == EACCES || err == ENOEXEC || err == EPERM) return exit_code::cannot_exec;
  }
  if (step >= 0 && (err == EBADF || err == EMFILE)) return exit_code::usage;
  return exit_code::os_error;
}

[[noreturn]] void child_fail(int report_fd, int step, int err) noexcept {
  Report r{step, err};
  ssize_t n = ::write(report_fd, &r, sizeof r);
  (void)n;
  ::_exit(127);
}

bool is_target(const SpawnRequest& req, int fd) noexcept {
  for (const auto& m : req.fds) {
    if (m.target == fd) return true;
  }
  return false;
}

// A duplicate of `fd` (close-on-exec) at a number that is not a target. Intermediate duplicates
// that land on target numbers stay open: they are replaced by dup2 or closed by close_range later.
int dup_off_targets(const SpawnRequest& req, int fd) noexcept {
  int copy = fd;
  do {
    copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return -1;
  } while (is_target(req, copy));
  return copy;
}

// Closes every descriptor >= 3 not in keep[0..n) (sorted here in place; no allocation).
void close_all_except(int* keep, size_t n) noexcept {
  std::sort(keep, keep + n);
  unsigned lo = 3;
  for (size_t i = 0; i < n; ++i) {
    if (keep[i] < 3) continue;
    auto fd = static_cast<unsigned>(keep[i]);
    if (fd > lo) ::syscall(SYS_close_range, lo, fd - 1, 0);
    if (fd + 1 > lo) lo = fd + 1;
  }
  ::syscall(SYS_close_range, lo, UINT_MAX, 0);
}

// What exec does to dispositions, done before the mask opens: a handler of the parent's never
// runs in the child; ignored signals stay ignored.
void default_caught_signals() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) != 0) continue;  // EINVAL for numbers the kernel does not have
    if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) ::sigaction(sig, &dfl, nullptr);
  }
}

// `script_argv`: like_exec only (else null), the argv that runs the executable with /bin/sh when
// the kernel does not know its format (ENOEXEC), as execvp(3) and so flock(1) do.
[[noreturn]] void run_child(const SpawnRequest& req, int report_fd, char* const* argv, char* const* script_argv,
                            char* const* envp, pid_t parent, char* self_pid_slot) noexcept {
  // 1. The report pipe must survive the shuffle: move it off every target number.
  if (is_target(req, report_fd)) {
    int moved = dup_off_targets(req, report_fd);
    if (moved < 0) child_fail(report_fd, kStepReportFd, errno);
    report_fd = moved;
  }
  // 2. Every source to a fresh descriptor that no target names, so no dup2 below can clobber a
  //    source another mapping still needs.
  int fresh[kMaxMappings] = {};
  int keep[kMaxMappings + 1];  // NOLINT(cppcoreguidelines-avoid-c-arrays): no allocation after fork
  size_t nkeep = 0;
  for (size_t i = 0; i < req.fds.size(); ++i) {
    fresh[i] = -1;
    if (req.fds[i].source < 0) continue;
    fresh[i] = dup_off_targets(req, req.fds[i].source);
    if (fresh[i] < 0) child_fail(report_fd, req.fds[i].target, errno);
  }
  // 3. Into place. dup2 clears FD_CLOEXEC on the copy: exactly the descriptors meant to be inherited.
  for (size_t i = 0; i < req.fds.size(); ++i) {
    int target = req.fds[i].target;
    if (fresh[i] < 0) {
      ::close(target);
      continue;
    }
    if (::dup2(fresh[i], target) < 0) child_fail(report_fd, target, errno);
    keep[nkeep++] = target;
  }
  if (req.inheritance == SpawnRequest::Inheritance::clean_slate) {
    // 4. Nothing else of the parent's survives (the fresh copies and the report pipe are
    //    cloexec; close them anyway except the report pipe, which exec closes).
    keep[nkeep++] = report_fd;
    close_all_except(keep, nkeep);
    reset_signals();
  } else {
    // 4. What exec keeps stays (the fresh copies and the report pipe are cloexec).
    default_caught_signals();
    ::sigprocmask(SIG_SETMASK, &req.signal_mask, nullptr);
  }
  if (req.session == SpawnRequest::Session::new_session && ::setsid() < 0) {
    child_fail(report_fd, kStepSession, errno);
  }
  if (req.session == SpawnRequest::Session::new_process_group && ::setpgid(0, 0) != 0) {
    child_fail(report_fd, kStepSession, errno);
  }
  if (!req.chdir.empty() && ::chdir(req.chdir.c_str()) != 0) child_fail(report_fd, kStepChdir, errno);
  if (req.umask) ::umask(*req.umask);
  if (req.gid) {
    if (::setgroups(req.groups.size(), req.groups.data()) != 0) child_fail(report_fd, kStepSetgroups, errno);
    if (::setgid(*req.gid) != 0) child_fail(report_fd, kStepSetgid, errno);
  }
  if (req.uid && ::setuid(*req.uid) != 0) child_fail(report_fd, kStepSetuid, errno);
  if (req.parent_death_signal != 0) {
    if (::prctl(PR_SET_PDEATHSIG, req.parent_death_signal) != 0) child_fail(report_fd, kStepDeathSignal, errno);
    // The parent may have died before the prctl: then nobody would deliver the signal.
    if (::getppid() != parent) ::_exit(127);
  }
  if (self_pid_slot != nullptr) {
    // The slot holds 20 NULs after "NAME=": write our pid's digits there.
    char digits[20];
    int n = 0;
    for (auto v = static_cast<unsigned long>(::getpid()); n == 0 || v != 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
    for (int i = 0; i < n; ++i) self_pid_slot[i] = digits[n - 1 - i];
  }
  ::execve(req.executable.c_str(), argv, envp);
  const int err = errno;
  if (err == ENOEXEC && script_argv != nullptr) ::execve(script_argv[0], script_argv, envp);
  child_fail(report_fd, kStepExec, err);
}

}  // namespace

SpawnError::SpawnError(const std::string& executable, int step, int err)
    : Error(executable, step == kStepExec ? "cannot execute" : "cannot start (" + step_name(step) + ")",
            std::strerror(err), exit_for(step, err)),
      step_(step_name(step)),
      errno_(err) {}

Child::Child(Child&& other) noexcept : pid_(std::exchange(other.pid_, 0)), pidfd_(std::move(other.pidfd_)) {}

Child& Child::operator=(Child&& other) noexcept {
  if (this != &other) {
    kill_and_reap();
    pid_ = std::exchange(other.pid_, 0);
    pidfd_ = std::move(other.pidfd_);
  }
  return *this;
}

Child::~Child() { kill_and_reap(); }

void Child::kill_and_reap() noexcept {
  if (pid_ <= 0) return;
  // Our own unreaped child: its pid cannot be reused until the waitpid below, so a plain kill is
  // as exact as the pidfd where the pidfd could not be opened or used.
  if (!pidfd_ || pidfd_signal_nothrow(pidfd_.get(), SIGKILL) != 0) ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = 0;
  pidfd_.reset();
}

int Child::wait() noexcept {
  int status = 0;
  if (pid_ <= 0) return -1;
  while (::waitpid(pid_, &status, 0) < 0) {
    if (errno != EINTR) {
      status = -1;
      break;
    }
  }
  pid_ = 0;
  pidfd_.reset();
  return status;
}

pid_t Child::release() noexcept {
  pidfd_.reset();
  return std::exchange(pid_, 0);
}

Child spawn(const SpawnRequest& request) {
  if (request.argv.empty()) throw Error(request.executable, "spawn", "empty argv", exit_code::usage);
  if (request.fds.size() > kMaxMappings) {
    throw Error(request.executable, "spawn", "more than 16 descriptor mappings", exit_code::usage);
  }
  std::vector<char*> argv;
  argv.reserve(request.argv.size() + 1);
  for (const auto& a : request.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> script_argv;  // /bin/sh EXECUTABLE ARGS... (argv[0] aside)
  std::string shell = "/bin/sh";
  if (request.inheritance == SpawnRequest::Inheritance::like_exec) {
    script_argv = {shell.data(), const_cast<char*>(request.executable.c_str())};
    script_argv.insert(script_argv.end(), argv.begin() + 1, argv.end());  // with the final null
  }
  std::vector<char*> envp;
  envp.reserve(request.env.size() + 1);
  for (const auto& e : request.env) envp.push_back(const_cast<char*>(e.c_str()));
  std::string self_pid_entry;
  char* self_pid_slot = nullptr;
  if (!request.self_pid_env.empty()) {
    self_pid_entry = request.self_pid_env + "=" + std::string(21, '\0');
    envp.push_back(self_pid_entry.data());
    self_pid_slot = self_pid_entry.data() + request.self_pid_env.size() + 1;
  }
  envp.push_back(nullptr);

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw Error(errno, request.executable, "spawn: pipe");
  UniqueFd report_r(p[0]);
  UniqueFd report_w(p[1]);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw Error(errno, request.executable, "spawn: fork");
  if (pid == 0) {
    run_child(request, report_w.get(), argv.data(), script_argv.empty() ? nullptr : script_argv.data(), envp.data(),
              parent, self_pid_slot);
  }
  report_w.reset();
  int pidfd = pidfd_open_nothrow(pid);  // our unreaped child: the pid cannot be reused yet
  Child child(pid, UniqueFd(pidfd >= 0 ? pidfd : -1));

  Report r{};
  ssize_t n = 0;
  do {
    n = ::read(report_r.get(), &r, sizeof r);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof r)) {
    child.wait();
    throw SpawnError(request.executable, r.step, r.err);
  }
  return child;
}

}  // namespace holdfast::sys
