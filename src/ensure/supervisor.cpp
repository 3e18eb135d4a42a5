// The supervisor: a small resident process that owns one instance for its whole life.
//
// Process tree:  client ──fork──▶ intermediate (setsid, exits) ──fork──▶ supervisor ──spawn──▶ daemon
// The supervisor is reparented away from the client, so no client has to reap it and no client's
// death affects it. It holds the instance lock from before the daemon exists until after the last
// process of the instance has exited, so the lock never depends on the daemon keeping a
// descriptor. It is a child subreaper (PR_SET_CHILD_SUBREAPER): a daemon that double-forks, or
// calls daemon(3) or setsid, stays its descendant, so "the instance" is exactly "the supervisor's
// descendants", and stop signals all of them (process groups and sessions do not matter).
// It holds the spawn lock until the record says ready or failed.
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ensure/internal.hpp"
#include "ensure/readiness.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

namespace holdfast::ensure_detail {
namespace {

constexpr int kProbeIntervalMs = 5;

class Supervisor {
 public:
  Supervisor(const SpawnPlan& plan, int spawn_fd, int instance_fd, int log_fd)
      : plan_(plan), record_(plan.record), spawn_fd_(spawn_fd), instance_fd_(instance_fd), log_fd_(log_fd) {}

  [[noreturn]] void run();

 private:
  void setup();
  void start_main();
  void on_signals();
  void reap_children();
  void on_main_exit(int status);
  void on_notify();
  void on_ready_pipe();
  void on_log_pipe();
  void rotate_log();
  void on_control(int value);
  void request_stop(int sig);
  void become_ready();
  bool set_main(pid_t pid);
  bool follow_remaining();
  bool has_children() const;
  std::vector<TreeMember> remaining_processes();
  void kill_all_and_wait();
  [[noreturn]] void fail(FailureKind kind, const std::string& cause, int exit_status);
  [[noreturn]] void finish();
  [[noreturn]] void publish_final_and_exit(int code);
  bool write();
  void log(const std::string& line) const;

  const SpawnPlan& plan_;
  InstanceRecord record_;
  int spawn_fd_;
  int instance_fd_;
  int log_fd_;
  pid_t self_ = 0;
  sys::UniqueFd signal_fd_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<ReadinessProbe> probe_;
  sys::UniqueFd ready_r_;      // fd:N readiness: read end
  sys::UniqueFd ready_w_;      // write end, mapped to N in the daemon, closed after spawn
  sys::UniqueFd log_r_;        // --log-max: the daemon's output comes through this pipe
  sys::UniqueFd log_w_;
  uint64_t log_size_ = 0;
  pid_t main_ = 0;             // the main process (0 once it has exited)
  sys::UniqueFd main_pidfd_;
  bool ready_ = false;
  bool ready_seen_ = false;    // readiness arrived this round; published after exits are handled
  bool stopping_ = false;
  int main_status_ = -1;       // the last main process's wait status
};

void Supervisor::log(const std::string& line) const {
  std::string text = "holdfast supervisor: " + plan_.paths.name + ": " + line + "\n";
  (void)sys::write_all(2, text);
}

bool Supervisor::write() {
  int rc = write_record_nothrow(plan_.paths.record, record_);
  if (rc != 0) log(std::string("cannot write instance record ") + plan_.paths.record + ": " + std::strerror(-rc));
  return rc == 0;
}

bool Supervisor::set_main(pid_t pid) {
  int fd = sys::pidfd_open_nothrow(pid);
  if (fd < 0) return false;
  sys::UniqueFd pidfd(fd);
  auto id = identity_of(pid);  // after the pidfd: nullopt if it exited (or is a zombie) meanwhile
  if (!id) return false;
  main_pidfd_ = std::move(pidfd);
  main_ = pid;
  record_.process = *id;
  return true;
}

// After a clean exit of the main process: the earliest-started remaining process becomes the main
// process. Candidates may exit while we look (a daemonizing intermediate does): try the next, and
// scan again if all went.
bool Supervisor::follow_remaining() {
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto rest = remaining_processes();
    if (rest.empty()) return false;
    for (const auto& m : rest) {
      if (set_main(m.pid)) {
        log("main process exited 0 (daemonized); following pid " + std::to_string(m.pid));
        return true;
      }
    }
  }
  return false;
}

void Supervisor::setup() {
  self_ = ::getpid();
  // Orphaned descendants (double forks, daemon(3)) are reparented to us, not to init.
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) fail(FailureKind::supervisor, "PR_SET_CHILD_SUBREAPER: " + std::string(std::strerror(errno)), -1);
  signal_fd_ = supervisor_signal_fd();
  if (!signal_fd_) fail(FailureKind::supervisor, "signalfd: " + std::string(std::strerror(errno)), -1);

  auto me = identity_of(self_);
  record_.launcher_pid = self_;
  record_.launcher_start_time = me ? me->start_time : 0;
  record_.launcher_lock_fd = instance_fd_;

  try {
    if (plan_.ready.kind == ReadySpec::Kind::notify) notify_ = std::make_unique<NotifySocket>(plan_.paths.dir, plan_.paths.notify);
  } catch (const Error& e) {
    fail(FailureKind::supervisor, e.what(), -1);
  }
  if (plan_.ready.kind == ReadySpec::Kind::fd) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) fail(FailureKind::supervisor, "pipe: " + std::string(std::strerror(errno)), -1);
    ready_r_.reset(p[0]);
    ready_w_.reset(p[1]);
  }
  if (plan_.daemon.log_max_bytes > 0) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) fail(FailureKind::supervisor, "pipe: " + std::string(std::strerror(errno)), -1);
    log_r_.reset(p[0]);
    log_w_.reset(p[1]);
    struct stat st {};
    if (::fstat(log_fd_, &st) == 0) log_size_ = static_cast<uint64_t>(st.st_size);
  }
  // S5: from here `stop` can verify us and ask us to stop, even before the daemon exists.
  if (!write()) fail(FailureKind::supervisor, "cannot write the instance record", -1);
}

void Supervisor::start_main() {
  sys::SpawnRequest req;
  req.executable = plan_.executable;
  req.argv = plan_.argv;
  req.env = plan_.environment;
  req.env.push_back("HOLDFAST_INSTANCE=" + plan_.paths.name);
  if (notify_) req.env.push_back("NOTIFY_SOCKET=" + notify_->path());
  int out = log_w_ ? log_w_.get() : log_fd_;
  req.fds = {{0, 0}, {1, out}, {2, out}};
  if (ready_w_) req.fds.push_back({plan_.ready.fd, ready_w_.get()});
  req.session = sys::SpawnRequest::Session::new_process_group;
  req.chdir = plan_.daemon.chdir;
  req.umask = plan_.daemon.umask;
  req.gid = plan_.daemon.gid;
  req.groups = plan_.daemon.groups;
  req.uid = plan_.daemon.uid;
  // If the supervisor is killed outright, the main process goes with it rather than run on
  // unmanaged (cleared by the kernel if the daemon changes its own credentials).
  req.parent_death_signal = SIGKILL;
  const int64_t not_before = coarse_realtime_ns();
  record_.spawned_unix_ns = sys::realtime_ns();
  try {
    auto child = sys::spawn(req);
    main_ = child.pid();
    main_pidfd_.reset(sys::pidfd_open_nothrow(main_));
    child.release();  // reaped by reap_children
  } catch (const sys::SpawnError& e) {
    FailureKind kind = e.exit_code() == exit_code::not_found     ? FailureKind::not_found
                       : e.exit_code() == exit_code::cannot_exec ? FailureKind::cannot_exec
                                                                 : FailureKind::setup;
    int status = kind == FailureKind::setup ? -1 : e.exit_code();
    fail(kind, e.what(), status);
  } catch (const Error& e) {
    fail(FailureKind::setup, e.what(), -1);
  }
  ready_w_.reset();
  auto id = identity_of(main_);
  record_.process.pid = main_;
  record_.process.start_time = id ? id->start_time : 0;
  if (plan_.ready.kind == ReadySpec::Kind::tcp || plan_.ready.kind == ReadySpec::Kind::unix_socket ||
      plan_.ready.kind == ReadySpec::Kind::file) {
    probe_ = std::make_unique<ReadinessProbe>(plan_.ready, self_, not_before);
  }
  if (!write()) fail(FailureKind::supervisor, "cannot write the instance record", -1);
  if (plan_.ready.kind == ReadySpec::Kind::none) become_ready();
}

void Supervisor::become_ready() {
  if (ready_) return;
  ready_ = true;
  record_.state = RecordState::ready;
  record_.ready_unix_ns = sys::realtime_ns();
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  // S4: a ready instance nobody can see is a failed start, not a silent one.
  if (!write()) fail(FailureKind::supervisor, "cannot write the ready record", -1);
  if (spawn_fd_ >= 0) ::close(spawn_fd_);  // single flight ends: the record is final for this start
  spawn_fd_ = -1;
}

bool Supervisor::has_children() const {
  siginfo_t info{};
  return ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 || errno != ECHILD;
}

// The instance's processes once the main process is gone. A /proc scan is not atomic: a
// daemonizing intermediate that exits while the scan runs can hide its child from it. So reap
// exited children and scan again until the scan agrees with the kernel (no children at all, or
// some found).
std::vector<TreeMember> Supervisor::remaining_processes() {
  for (int attempt = 0;; ++attempt) {
    int status = 0;
    while (::waitpid(-1, &status, WNOHANG) > 0) {
    }
    auto rest = descendants_of(self_);
    if (!rest.empty() || !has_children() || attempt >= 1000) return rest;
    ::usleep(1000);
  }
}

void Supervisor::reap_children() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    if (pid == main_) on_main_exit(status);
  }
  if (!has_children()) finish();
}

void Supervisor::on_main_exit(int status) {
  main_ = 0;
  main_pidfd_.reset();
  main_status_ = status;
  if (stopping_) return;  // finish() once the last process is gone
  const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (clean) {
    // A self-daemonizing command: its first process exits 0 once a descendant runs. Follow the
    // earliest-started descendant (a worker it forks later is younger); MAINPID= overrides it.
    if (follow_remaining()) {
      record_.forked = true;
      if (ready_seen_) become_ready();
      else write();
      return;
    }
  }
  if (ready_seen_) become_ready();  // it reported ready, then exited: it was ready
  // C3: a main process that crashed (or exited) is the end of the instance, whatever it left
  // behind: never adopt a leftover child as the instance.
  if (!ready_) fail(FailureKind::exited, describe_wait_status(status) + " before ready", wait_status_code(status));
  record_.failure = "main process " + describe_wait_status(status);
  record_.exit_status = wait_status_code(status);
  kill_all_and_wait();
  finish();
}

void Supervisor::on_notify() {
  int rejected = 0;
  for (const auto& m : notify_->receive(self_, rejected)) {
    if (m.main_pid > 0) {
      // Only a process of this instance can become its main process.
      if (is_descendant(m.main_pid, self_)) set_main(m.main_pid);
      else log("ignored MAINPID=" + std::to_string(m.main_pid) + ": not a process of the instance");
    }
    if (m.has_status) record_.status = m.status;
    if (m.ready) ready_seen_ = true;
    else if ((m.has_status || m.main_pid > 0) && ready_) write();
  }
  if (rejected > 0) log(rejected_notifications(rejected));
}

void Supervisor::on_ready_pipe() {
  if (read_ready_pipe(ready_r_)) ready_seen_ = true;
}

void Supervisor::rotate_log() {
  // LOG -> LOG.1 (replacing the previous LOG.1), then a fresh LOG.
  std::string old = plan_.log_path + ".1";
  if (::rename(plan_.log_path.c_str(), old.c_str()) != 0) return;
  int fd = sys::open_nothrow(AT_FDCWD, plan_.log_path, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY, 0644);
  if (fd < 0) return;
  ::dup2(fd, log_fd_);
  ::dup2(fd, 2);  // our own messages follow
  ::close(fd);
  log_size_ = 0;
}

void Supervisor::on_log_pipe() {
  char buf[65536];
  ssize_t n = ::read(log_r_.get(), buf, sizeof buf);
  if (n == 0) {
    log_r_.reset();
    return;
  }
  if (n < 0) return;
  const uint64_t max = plan_.daemon.log_max_bytes;
  std::string_view data(buf, static_cast<size_t>(n));
  while (!data.empty()) {
    if (log_size_ >= max) rotate_log();
    const uint64_t room = max > log_size_ ? max - log_size_ : max;
    size_t take = static_cast<size_t>(std::min<uint64_t>(room, data.size()));
    if (take < data.size()) {
      // Cut after the last whole line that fits; a line longer than the limit is split.
      auto nl = data.substr(0, take).rfind('\n');
      if (nl != std::string_view::npos) {
        take = nl + 1;
      } else if (log_size_ > 0) {
        rotate_log();
        continue;
      }
    }
    if (sys::write_all(log_fd_, data.substr(0, take)) != 0) return;
    log_size_ += take;
    data.remove_prefix(take);
  }
}

void Supervisor::request_stop(int sig) {
  stopping_ = true;
  signal_descendants(self_, sig);
}

void Supervisor::on_control(int value) {
  const int sig = value & 0xffff;
  const auto mode = static_cast<ControlMode>(value >> 16);
  if (sig < 0 || sig >= NSIG) return;
  if (mode == ControlMode::stop) request_stop(sig);
  else if (mode == ControlMode::signal_main && main_pidfd_) sys::pidfd_signal_nothrow(main_pidfd_.get(), sig);
}

void Supervisor::on_signals() {
  signalfd_siginfo si{};
  while (::read(signal_fd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    const int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGCHLD) continue;  // reaped below, whatever the count of coalesced signals
    if (sig == control_signal()) on_control(si.ssi_int);
    else if (sig == SIGHUP) on_control(control_value(ControlMode::signal_main, SIGHUP));
    else request_stop(sig);  // SIGTERM/SIGINT to the supervisor: stop the instance with it
  }
  reap_children();
}

void Supervisor::kill_all_and_wait() {
  stopping_ = true;
  for (;;) {
    signal_descendants(self_, SIGKILL);
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0 && errno == ECHILD) return;
    if (pid == main_) {
      main_ = 0;
      main_pidfd_.reset();
      main_status_ = status;
    }
  }
}

void Supervisor::fail(FailureKind kind, const std::string& cause, int exit_status) {
  log(cause);  // into the log first, so the tail a client shows includes it
  kill_all_and_wait();
  record_.state = RecordState::failed;
  record_.failure = cause;
  record_.failure_kind = kind;
  record_.exit_status = exit_status;
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  publish_final_and_exit(1);
}

// The final record goes in after the instance lock is released but while the spawn lock is held
// (taken back if readiness had released it): nobody sees a free lock with a live-looking record
// for longer than this, nobody sees a final record with the lock still held, and no new start
// (which needs the spawn lock) can write its record before ours.
void Supervisor::publish_final_and_exit(int code) {
  if (spawn_fd_ < 0) {
    int fd = sys::open_nothrow(AT_FDCWD, plan_.paths.spawn_lock, O_RDWR | O_NOCTTY);
    if (fd >= 0) {
      struct flock fl {};
      fl.l_type = F_WRLCK;
      fl.l_whence = SEEK_SET;
      // Clients hold it only to re-check and fork; signals are blocked, so no EINTR.
      while (::fcntl(fd, F_OFD_SETLKW, &fl) != 0 && errno == EINTR) {
      }
      spawn_fd_ = fd;
    }
  }
  if (instance_fd_ >= 0) ::close(instance_fd_);
  instance_fd_ = -1;
  write();
  notify_.reset();
  ::_exit(code);  // releases the spawn lock
}

void Supervisor::finish() {
  if (!ready_) {
    std::string cause = main_status_ == -1 ? "stopped before ready"
                                           : describe_wait_status(main_status_) + " before ready";
    fail(FailureKind::exited, cause, main_status_ == -1 ? -1 : wait_status_code(main_status_));
  }
  record_.state = RecordState::stopped;
  if (record_.exit_status == -1 && main_status_ != -1) record_.exit_status = wait_status_code(main_status_);
  publish_final_and_exit(0);
}

void Supervisor::run() {
  setup();
  start_main();
  for (;;) {
    pollfd fds[4];
    nfds_t n = 0;
    fds[n++] = {signal_fd_.get(), POLLIN, 0};
    const int notify_slot = notify_ ? static_cast<int>(n) : -1;
    if (notify_) fds[n++] = {notify_->fd(), POLLIN, 0};
    const int ready_slot = ready_r_ ? static_cast<int>(n) : -1;
    if (ready_r_) fds[n++] = {ready_r_.get(), POLLIN, 0};
    const int log_slot = log_r_ ? static_cast<int>(n) : -1;
    if (log_r_) fds[n++] = {log_r_.get(), POLLIN, 0};
    const bool probing = probe_ && !ready_ && !stopping_;
    if (::poll(fds, n, probing ? kProbeIntervalMs : -1) < 0 && errno != EINTR) {
      fail(FailureKind::supervisor, "poll: " + std::string(std::strerror(errno)), -1);
    }
    // Readiness is noted first (a daemon that reports ready and exits at once was still ready),
    // then exits are handled (a double fork moves the main process), then readiness is published
    // with the main process as it is now.
    if (notify_slot >= 0 && fds[notify_slot].revents != 0) on_notify();
    if (ready_slot >= 0 && fds[ready_slot].revents != 0) on_ready_pipe();
    if (log_slot >= 0 && fds[log_slot].revents != 0) on_log_pipe();
    if (probing && probe_->ready()) ready_seen_ = true;
    if (fds[0].revents != 0) on_signals();
    if (ready_seen_) become_ready();
  }
}

}  // namespace

void start_supervisor(const SpawnPlan& plan, int spawn_lock_fd, int instance_lock_fd, int log_fd,
                      int null_fd) {
  pid_t mid = ::fork();
  if (mid < 0) throw Error(errno, plan.paths.lock, "cannot fork supervisor");
  if (mid == 0) {
    // Intermediate: new session (no controlling terminal, immune to the client's process-group
    // signals), then fork the supervisor and exit so it is reparented away from the client.
    ::setsid();
    pid_t supervisor = ::fork();
    if (supervisor != 0) ::_exit(supervisor < 0 ? 1 : 0);
    // Supervisor stdio: /dev/null in, log out. Nothing else of the client's survives.
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    sys::close_fds_except({spawn_lock_fd, instance_lock_fd, log_fd});
    sys::reset_signals();
    Supervisor(plan, spawn_lock_fd, instance_lock_fd, log_fd).run();
  }
  int status = 0;
  while (::waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error(EAGAIN, plan.paths.lock, "cannot fork supervisor");
  }
}

}  // namespace holdfast::ensure_detail
