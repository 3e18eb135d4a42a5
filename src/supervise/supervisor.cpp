// holdfast supervise: the resident supervisor of ensure (src/ensure/supervisor.cpp) made to keep
// its instance running — in the calling process (so systemd's Type=notify main process is the
// supervisor), restarting with backoff, pausing at a start limit, adopting a live instance left by
// an earlier supervisor, and able to leave its instance running when it stops.
//
// Event-driven: one poll over a signalfd (SIGCHLD, stop/keep/restart requests), a timerfd armed
// for the nearest deadline only (next start, kill-after, readiness timeout, watchdog), the
// adopted main process's pidfd, the sd_notify socket and the readiness pipe. An idle supervisor
// (its child running, no watchdog) sleeps in poll with no timeout.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "ensure/internal.hpp"
#include "ensure/readiness.hpp"
#include "holdfast/supervise.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

extern char** environ;

namespace holdfast {

using namespace ensure_detail;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kProbeInterval{5};
constexpr uint64_t kTimeSliceNs = 100000;  // 0.1 ms, the smallest custom slice the kernel accepts

std::string ms_text(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<milliseconds>(d).count()) + " ms";
}

// What systemd and holdfast set per service, which the child must not inherit from our own
// environment (ensure's daemon_environment strips NOTIFY_SOCKET and HOLDFAST_INSTANCE* already).
constexpr std::string_view kPerServiceVariables[] = {"WATCHDOG_USEC=", "WATCHDOG_PID=", "LISTEN_",
                                                     "HOLDFAST_ATTEMPT=", "HOLDFAST_SUPERVISE_TEST_"};

// The exit status a zombie left in /proc/PID/stat (field 52, in waitpid's format), if `pid` is
// still that zombie (its start time, field 22, matches). For an adopted main process, which is
// not our child, this is the only way to learn how it ended; its real parent may reap it first.
std::optional<int> zombie_exit_status(pid_t pid, uint64_t start_time) {
  auto text = sys::read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text) return std::nullopt;
  auto close = text->rfind(')');
  if (close == std::string::npos) return std::nullopt;
  const char* p = text->c_str() + close + 2;
  if (*p != 'Z') return std::nullopt;
  uint64_t start = 0;
  long long status = -1;
  for (int field = 3; *p != '\0'; ++field) {
    if (field == 22) start = std::strtoull(p, nullptr, 10);
    if (field == 52) status = std::strtoll(p, nullptr, 10);
    while (*p != '\0' && *p != ' ') ++p;
    while (*p == ' ') ++p;
  }
  if (start != start_time || status < 0) return std::nullopt;
  return static_cast<int>(status);
}

// The process whose environment carries HOLDFAST_ATTEMPT=`attempt` (the start a killed supervisor
// forked but did not live to record), found by reading /proc/PID/environ (this user's processes).
std::optional<pid_t> find_attempt(uint64_t attempt) {
  const std::string needle = std::string(1, '\0') + "HOLDFAST_ATTEMPT=" + std::to_string(attempt) + std::string(1, '\0');
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return std::nullopt;
  std::optional<pid_t> found;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0' || pid == ::getpid()) continue;
    auto text = sys::read_file("/proc/" + std::to_string(pid) + "/environ", 1 << 20);
    if (!text) continue;
    if ((std::string(1, '\0') + *text).find(needle) != std::string::npos) {
      found = static_cast<pid_t>(pid);
      break;
    }
  }
  ::closedir(d);
  return found;
}

double random_unit() { return static_cast<double>(sys::random_u64() >> 11) / static_cast<double>(1ULL << 53); }

// systemd's notify socket, when we run under it (NOTIFY_SOCKET, '@' for the abstract namespace).
class Upstream {
 public:
  Upstream() {
    const char* where = std::getenv("NOTIFY_SOCKET");
    if (where == nullptr || *where == '\0') return;
    std::string path(where);
    if (path.size() >= sizeof addr_.sun_path || (path[0] != '/' && path[0] != '@')) return;
    addr_.sun_family = AF_UNIX;
    std::memcpy(addr_.sun_path, path.data(), path.size());
    len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    if (path[0] == '@') addr_.sun_path[0] = '\0';
    else len_ += 1;
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const char* usec = std::getenv("WATCHDOG_USEC");
    const char* wpid = std::getenv("WATCHDOG_PID");
    if (usec != nullptr && (wpid == nullptr || std::strtol(wpid, nullptr, 10) == ::getpid())) {
      long long us = std::strtoll(usec, nullptr, 10);
      if (us > 0) watchdog_ = std::chrono::microseconds(us);
    }
  }
  bool active() const { return static_cast<bool>(fd_); }
  std::optional<std::chrono::microseconds> watchdog() const { return watchdog_; }
  void send(const std::string& text) const {
    if (!fd_) return;
    (void)::sendto(fd_.get(), text.data(), text.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr_), len_);
  }

 private:
  sys::UniqueFd fd_;
  sockaddr_un addr_{};
  socklen_t len_ = 0;
  std::optional<std::chrono::microseconds> watchdog_;
};

class Supervisor {
 public:
  Supervisor(std::string name, std::vector<std::string> command, const SuperviseOptions& options)
      : name_(std::move(name)), command_(std::move(command)), options_(options) {}

  SuperviseResult run();

 private:
  enum class Phase { starting, ready, stopping, backoff, paused };
  // Why the current process is being stopped, and what follows once it is gone.
  enum class After { restart_now, restart_backoff, finish, none };

  void acquire();
  void setup();
  bool try_adopt(const std::optional<InstanceRecord>& old);
  void start_child();
  void start_external();
  pid_t spawn_shell(const std::string& command);
  void on_check_exit(int status);
  void on_start_command_exit(int status);
  void kill_helpers();
  void schedule_start(const std::string& why);
  void become_ready();
  void on_signals();
  void on_control(int value);
  void reap();
  void on_main_exit(std::optional<int> status);
  void after_instance_gone();
  void begin_stop(int sig, After after, const std::string& why);
  void signal_instance(int sig);
  void on_notify();
  void on_ready_pipe();
  void watch_adopted();
  void on_timer();
  void check_watchdog(Clock::time_point now);
  void arm_timer();
  bool instance_gone() const;
  bool has_children() const;
  void finish(int code, const std::string& state, const std::string& why);
  void keep_and_leave(const std::string& why);
  void decide(const std::string& decision, bool also_log = true);
  void set_state(Phase phase, const std::string& state);
  void write();
  void log(const std::string& line) const;

  std::string name_;
  std::vector<std::string> command_;
  const SuperviseOptions& options_;
  Paths paths_;
  std::string executable_;
  std::string log_path_;
  sys::UniqueFd log_fd_;
  sys::UniqueFd spawn_fd_;
  sys::UniqueFd instance_fd_;
  sys::UniqueFd signal_fd_;
  sys::UniqueFd timer_fd_;
  std::vector<std::string> environment_;
  InstanceRecord record_;
  pid_t self_ = 0;
  Upstream upstream_;
  bool upstream_ready_sent_ = false;

  Phase phase_ = Phase::starting;
  After after_ = After::none;
  std::optional<SuperviseResult> done_;
  // The current main process.
  pid_t main_ = 0;
  sys::UniqueFd main_pidfd_;
  bool main_is_child_ = false;
  bool ready_seen_ = false;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<ReadinessProbe> probe_;
  sys::UniqueFd ready_r_;
  sys::UniqueFd ready_w_;
  Clock::time_point started_at_{};
  Clock::time_point ready_deadline_ = Clock::time_point::max();
  Clock::time_point next_probe_ = Clock::time_point::max();
  Clock::time_point watchdog_deadline_ = Clock::time_point::max();
  Clock::time_point upstream_ping_at_ = Clock::time_point::max();
  Clock::time_point kill_at_ = Clock::time_point::max();
  Clock::time_point start_at_ = Clock::time_point::max();
  bool killed_ = false;
  bool last_run_failed_ = false;
  const bool die_after_fork_ = std::getenv("HOLDFAST_SUPERVISE_TEST_DIE_AFTER_FORK") != nullptr;
  bool attempt_published_ = false;        // record_.attempt is the next start's, already written
  bool external_ = false;                 // --start: the instance is what --check checks
  pid_t check_pid_ = 0;                   // a running --check
  bool check_timed_out_ = false;
  unsigned check_failures_ = 0;           // consecutive failed checks
  Clock::time_point next_check_at_ = Clock::time_point::max();
  pid_t start_pid_ = 0;                   // a running --start command
  bool start_ran_ = false;                // external: a --start command has run in this supervisor
  pid_t stop_pid_ = 0;                    // a running --stop command
  uint64_t failures_ = 0;                 // consecutive unhealthy runs (the backoff exponent)
  double jitter_unit_ = 0;                // this streak's jitter draw, in [0, 1)
  std::deque<Clock::time_point> starts_;  // starts inside the start-limit window
};

void Supervisor::log(const std::string& line) const {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  ::gmtime_r(&ts.tv_sec, &t);
  char stamp[80];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1000000);
  const std::string text = "holdfast supervise: " + name_ + ": " + line + "\n";
  (void)sys::write_all(2, text);
  if (log_fd_) (void)sys::write_all(log_fd_.get(), std::string(stamp) + " " + text);
}

void Supervisor::write() {
  int rc = write_record_nothrow(paths_.record, record_);
  if (rc != 0) log(std::string("cannot write instance record ") + paths_.record + ": " + std::strerror(-rc));
}

void Supervisor::decide(const std::string& decision, bool also_log) {
  record_.supervision->decision = decision;
  if (also_log) log(decision);
}

void Supervisor::set_state(Phase phase, const std::string& state) {
  phase_ = phase;
  record_.supervision->state = state;
  if (phase != Phase::backoff && phase != Phase::paused) record_.supervision->next_attempt_unix_ns = 0;
}

// Takes the spawn lock (single flight with ensure clients and other supervisors), then the
// instance lock, both without waiting on another supervisor: a held instance lock means NAME is
// already supervised (or ensured), and this call has nothing to do.
void Supervisor::acquire() {
  const auto give_up_at = Clock::now() + std::chrono::seconds(30);
  auto already = [&]() {
    auto rec = read_record(paths_.record);
    std::string who = rec && rec->launcher_pid > 0 ? " by pid " + std::to_string(rec->launcher_pid) : "";
    std::string what = rec && rec->supervision ? "already supervised" : "already running";
    return Error(name_, "supervise", what + who + " (the instance lock " + paths_.lock + " is held)",
                 exit_code::conflict);
  };
  for (;;) {
    spawn_fd_ = open_lock_file(paths_.spawn_lock);
    int rc = ofd_try_lock(spawn_fd_.get());
    if (rc == 0) break;
    if (rc != -EAGAIN) throw Error(-rc, paths_.spawn_lock, "cannot lock");
    spawn_fd_.reset();
    // Someone is starting the instance: an ensure client or a supervisor between its two locks
    // (microseconds), or an ensure'd start waiting for readiness while it holds the instance lock.
    if (lock_held(paths_.lock)) throw already();
    if (Clock::now() >= give_up_at) {
      throw Error(paths_.spawn_lock, "supervise", "the spawn lock stayed held for 30 s", exit_code::temp_fail);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  instance_fd_ = open_lock_file(paths_.lock);
  int held = ofd_held_elsewhere(instance_fd_.get());
  if (held < 0) throw Error(-held, paths_.lock, "cannot test lock (F_OFD_GETLK)");
  if (held == 1) throw already();
}

bool Supervisor::try_adopt(const std::optional<InstanceRecord>& old_record) {
  if (!old_record || !old_record->supervision) return false;
  if (old_record->state != RecordState::ready && old_record->state != RecordState::starting) return false;
  std::optional<InstanceRecord> old = old_record;
  if (old->process.pid <= 0) {
    // Its supervisor published this attempt and may have forked it, then died before recording
    // the pid: the child carries the attempt id in its environment.
    auto pid = find_attempt(old->attempt);
    if (!pid) return false;
    auto id = identity_of(*pid);
    if (!id) return false;
    old->process = *id;
    log("found pid " + std::to_string(*pid) + " of attempt " + std::to_string(old->attempt) + ", which its supervisor did not live to record");
  }
  if (judge_liveness(old->process).liveness != Liveness::alive) return false;
  int fd = sys::pidfd_open_nothrow(old->process.pid);
  if (fd < 0) return false;
  sys::UniqueFd pidfd(fd);
  // Re-checked after the pidfd pins it: the pidfd now names exactly the recorded process.
  auto now = identity_of(old->process.pid);
  if (!now || now->start_time != old->process.start_time) return false;
  main_ = old->process.pid;
  main_pidfd_ = std::move(pidfd);
  main_is_child_ = false;
  record_.process = old->process;
  record_.attempt = old->attempt;
  record_.spawned_unix_ns = old->spawned_unix_ns;
  record_.ready_unix_ns = old->ready_unix_ns;
  record_.attempt_started_boot_ns = old->attempt_started_boot_ns;
  record_.attempt_ended_boot_ns = old->attempt_ended_boot_ns;
  record_.status = old->status;
  record_.forked = old->forked;
  if (old->supervision) {
    record_.supervision->starts = old->supervision->starts;
    record_.supervision->restarts = old->supervision->restarts;
    record_.supervision->last_exit = old->supervision->last_exit;
    record_.supervision->last_exit_status = old->supervision->last_exit_status;
  }
  record_.supervision->adopted = true;
  started_at_ = Clock::now();
  const std::string from = old->launcher_pid > 0 ? " (left running by supervisor pid " + std::to_string(old->launcher_pid) + ")" : "";
  decide("adopted pid " + std::to_string(main_) + from + ": verified by pid, start time and boot id, watched by a pidfd");
  if (old->state != RecordState::ready) {
    log("pid " + std::to_string(main_) + " had not reported ready to its supervisor; its readiness channel went with it: counted as ready");
  }
  return true;
}

// An adopted main process gets the checks a started one gets, from now: --check on its schedule,
// the heartbeat file's age, and sd_notify WATCHDOG=1 — for which the socket the earlier supervisor
// gave it (NOTIFY_SOCKET in its environment) is bound again here, if it was told the same
// WATCHDOG_USEC (an interval it was not told would restart it for pinging at its own pace).
void Supervisor::watch_adopted() {
  const auto now = Clock::now();
  if (!options_.check_command.empty()) next_check_at_ = now + options_.check_every;
  if (!options_.watchdog) return;
  if (!options_.heartbeat_file.empty()) {
    watchdog_deadline_ = now + *options_.watchdog;
    return;
  }
  std::string socket;
  std::string usec;
  if (auto env = sys::read_file("/proc/" + std::to_string(main_) + "/environ", 1 << 20)) {
    for (size_t at = 0; at < env->size();) {
      const auto end = std::min(env->find('\0', at), env->size());
      const std::string_view entry(env->data() + at, end - at);
      if (entry.starts_with("NOTIFY_SOCKET=")) socket = entry.substr(14);
      if (entry.starts_with("WATCHDOG_USEC=")) usec = entry.substr(14);
      at = end + 1;
    }
  }
  const auto want = std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(*options_.watchdog).count());
  if (socket.empty() || usec != want) {
    log("watchdog: pid " + std::to_string(main_) + " was started without WATCHDOG_USEC=" + want +
        ": its watchdog begins with the next start");
    return;
  }
  try {
    notify_ = std::make_unique<NotifySocket>(NotifySocket::TakeOver{socket}, paths_.notify);
  } catch (const Error& e) {
    log(std::string("watchdog: cannot listen where pid ") + std::to_string(main_) + " pings (" + e.what() +
        "): its watchdog begins with the next start");
    return;
  }
  watchdog_deadline_ = now + *options_.watchdog;
  log("watchdog: listening for pid " + std::to_string(main_) + "'s WATCHDOG=1 on " + socket);
}

void Supervisor::setup() {
  self_ = ::getpid();
  // A child's double-forked descendants stay ours. Not for --start: what a start command leaves
  // running (a tmux server) is the external thing, never a process of ours to reap or signal.
  if (!external_ && ::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) throw Error(errno, paths_.lock, "PR_SET_CHILD_SUBREAPER");
  signal_fd_ = supervisor_signal_fd();
  if (!signal_fd_) throw Error(errno, paths_.lock, "signalfd");
  // Restart latency on a busy machine is mostly the wait for a CPU after each wake-up (SIGCHLD,
  // then the backoff timer). Our bursts are short, so a short slice (EEVDF, Linux 6.12+) puts us
  // ahead when we wake, at no cost to others. Best effort: older kernels refuse it. Forked
  // children start with the default slice (reset on fork), so the supervised process is unchanged.
  (void)sys::set_time_slice(kTimeSliceNs);
  timer_fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!timer_fd_) throw Error(errno, paths_.lock, "timerfd_create");
  const bool wants_notify = options_.base.ready.kind == ReadySpec::Kind::notify ||
                            (options_.watchdog && options_.heartbeat_file.empty());
  if (wants_notify) notify_ = std::make_unique<NotifySocket>(paths_.dir, paths_.notify);
  environment_ = daemon_environment(options_.base.environment, kPerServiceVariables);
  if (upstream_.watchdog() && !options_.watchdog) {
    // systemd watches us: ping at half its interval (sd_watchdog_enabled(3)'s advice).
    upstream_ping_at_ = Clock::now();
  }
}

void Supervisor::signal_instance(int sig) {
  signal_descendants(self_, sig);
  if (main_pidfd_) sys::pidfd_signal_nothrow(main_pidfd_.get(), sig);
  if (main_ > 0 && !main_is_child_) signal_descendants(main_, sig);
}

bool Supervisor::has_children() const {
  siginfo_t info{};
  return ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 || errno != ECHILD;
}

bool Supervisor::instance_gone() const { return main_ == 0 && !has_children(); }

void Supervisor::start_child() {
  // The start limit: at most `burst` starts in any `window`.
  const auto now = Clock::now();
  while (!starts_.empty() && now - starts_.front() >= options_.limit.window) starts_.pop_front();
  if (options_.limit.burst > 0 && starts_.size() >= options_.limit.burst) {
    const std::string why = std::to_string(starts_.size()) + " starts within " + ms_text(options_.limit.window);
    if (options_.limit.give_up) {
      finish(exit_code::conflict, "given-up", "start limit reached (" + why + "): giving up (--give-up)");
      return;
    }
    starts_.clear();
    set_state(Phase::paused, "paused");
    start_at_ = now + options_.limit.pause;
    record_.state = RecordState::starting;
    record_.supervision->next_attempt_unix_ns =
        sys::realtime_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(options_.limit.pause).count();
    decide("start limit reached (" + why + "): pausing " + ms_text(options_.limit.pause) + ", then trying again");
    write();
    return;
  }
  starts_.push_back(now);
  if (external_) {
    start_external();
    return;
  }

  sys::SpawnRequest req;
  req.executable = executable_;
  req.argv = command_;
  req.env = environment_;
  req.env.push_back("HOLDFAST_INSTANCE=" + name_);
  if (notify_) req.env.push_back("NOTIFY_SOCKET=" + notify_->path());
  if (options_.watchdog && options_.heartbeat_file.empty()) {
    req.env.push_back("WATCHDOG_USEC=" + std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(*options_.watchdog).count()));
    req.self_pid_env = "WATCHDOG_PID";
  }
  if (options_.base.ready.kind == ReadySpec::Kind::fd) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw Error(errno, paths_.lock, "pipe");
    ready_r_.reset(p[0]);
    ready_w_.reset(p[1]);
  }
  sys::UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC | O_NOCTTY));
  req.fds = {{0, null ? null.get() : -1}, {1, log_fd_.get()}, {2, log_fd_.get()}};
  if (ready_w_) req.fds.push_back({options_.base.ready.fd, ready_w_.get()});
  req.session = sys::SpawnRequest::Session::new_process_group;
  const auto& d = options_.base.daemon;
  req.chdir = d.chdir;
  req.umask = d.umask;
  req.gid = d.gid;
  req.groups = d.groups;
  req.uid = d.uid;
  // No parent-death signal: the instance outlives a killed supervisor, and the next one adopts it.
  // The attempt id is published (with no pid) before the fork and given to the child, so a
  // supervisor killed before it records the pid leaves a child the next one can still find.
  if (!attempt_published_) {
    record_.attempt = sys::random_u64() | 1;
    record_.process.pid = 0;
    record_.state = RecordState::starting;
    write();
  }
  attempt_published_ = false;
  req.env.push_back("HOLDFAST_ATTEMPT=" + std::to_string(record_.attempt));
  const int64_t not_before = coarse_realtime_ns();
  record_.spawned_unix_ns = sys::realtime_ns();
  record_.attempt_started_boot_ns = sys::boottime_ns();
  record_.attempt_ended_boot_ns = 0;
  record_.ready_unix_ns = 0;
  record_.status.clear();
  record_.forked = false;
  record_.supervision->adopted = false;
  started_at_ = now;
  killed_ = false;
  ready_seen_ = false;
  try {
    auto child = sys::spawn(req);
    main_ = child.pid();
    main_pidfd_.reset(sys::pidfd_open_nothrow(main_));
    main_is_child_ = true;
    child.release();  // reaped in reap()
    // Fault injection for the test of the fork-to-record window (tests/supervise).
    if (die_after_fork_) ::raise(SIGKILL);
  } catch (const Error& e) {
    ready_w_.reset();
    ready_r_.reset();
    record_.supervision->starts += 1;
    record_.supervision->last_exit = std::string("could not start: ") + e.what();
    record_.supervision->last_exit_status = e.exit_code();
    last_run_failed_ = true;
    log(std::string("could not start: ") + e.what());
    schedule_start("the start failed");
    return;
  }
  ready_w_.reset();
  record_.supervision->starts += 1;
  if (record_.supervision->starts > 1) record_.supervision->restarts += 1;
  auto id = identity_of(main_);
  record_.process = ProcessIdentity{main_, id ? id->start_time : 0, this_boot_id(), this_host()};
  record_.state = RecordState::starting;
  set_state(Phase::starting, "starting");
  const auto k = options_.base.ready.kind;
  if (k == ReadySpec::Kind::tcp || k == ReadySpec::Kind::unix_socket || k == ReadySpec::Kind::file) {
    probe_ = std::make_unique<ReadinessProbe>(options_.base.ready, self_, not_before);
    next_probe_ = now;
  }
  ready_deadline_ = options_.base.ready_timeout.count() > 0 ? now + options_.base.ready_timeout : Clock::time_point::max();
  if (options_.watchdog) watchdog_deadline_ = now + *options_.watchdog;
  decide("started pid " + std::to_string(main_) + " (start " + std::to_string(record_.supervision->starts) + ")");
  write();
  if (k == ReadySpec::Kind::none) become_ready();
}

pid_t Supervisor::spawn_shell(const std::string& command) {
  sys::SpawnRequest req;
  req.executable = "/bin/sh";
  req.argv = {"sh", "-c", command};
  req.env = environment_;
  req.env.push_back("HOLDFAST_INSTANCE=" + name_);
  sys::UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC | O_NOCTTY));
  req.fds = {{0, null ? null.get() : -1}, {1, log_fd_.get()}, {2, log_fd_.get()}};
  req.session = sys::SpawnRequest::Session::new_process_group;
  req.chdir = options_.base.daemon.chdir;
  req.umask = options_.base.daemon.umask;
  auto child = sys::spawn(req);
  return child.release();  // reaped in reap()
}

void Supervisor::kill_helpers() {
  // Our own unreaped children, each leading its process group: the group id cannot be reused yet.
  for (pid_t pid : {check_pid_, start_pid_}) {
    if (pid > 0) ::kill(-pid, SIGKILL);
  }
  check_timed_out_ = false;
  next_check_at_ = Clock::time_point::max();
}

void Supervisor::start_external() {
  const auto now = Clock::now();
  record_.attempt = sys::random_u64() | 1;
  record_.attempt_started_boot_ns = sys::boottime_ns();
  record_.attempt_ended_boot_ns = 0;
  record_.spawned_unix_ns = sys::realtime_ns();
  record_.ready_unix_ns = 0;
  record_.state = RecordState::starting;
  started_at_ = now;
  ready_seen_ = false;
  start_ran_ = true;
  record_.supervision->starts += 1;
  if (record_.supervision->starts > 1) record_.supervision->restarts += 1;
  set_state(Phase::starting, "starting");
  ready_deadline_ = options_.base.ready_timeout.count() > 0 ? now + options_.base.ready_timeout : Clock::time_point::max();
  next_check_at_ = Clock::time_point::max();  // checked once the start command has finished
  try {
    start_pid_ = spawn_shell(options_.start_command);
  } catch (const Error& e) {
    record_.supervision->last_exit = std::string("start command could not run: ") + e.what();
    schedule_start(record_.supervision->last_exit);
    return;
  }
  decide("ran the start command (start " + std::to_string(record_.supervision->starts) + "): " + options_.start_command);
  write();
}

void Supervisor::on_start_command_exit(int status) {
  start_pid_ = 0;
  if (phase_ != Phase::starting) return;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    log("start command exited 0: checking");
    next_check_at_ = Clock::now();
    return;
  }
  record_.supervision->last_exit = "start command " + describe_wait_status(status);
  record_.supervision->last_exit_status = wait_status_code(status);
  ready_deadline_ = Clock::time_point::max();
  schedule_start(record_.supervision->last_exit);
}

void Supervisor::on_check_exit(int status) {
  check_pid_ = 0;
  const bool timed_out = std::exchange(check_timed_out_, false);
  if (phase_ == Phase::stopping || phase_ == Phase::backoff || phase_ == Phase::paused || done_) return;
  const auto now = Clock::now();
  const bool ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  const std::string what = timed_out ? "timed out after " + ms_text(options_.check_every) : describe_wait_status(status);
  if (ok) {
    check_failures_ = 0;
    if (external_ && phase_ == Phase::starting) ready_seen_ = true;
    next_check_at_ = now + options_.check_every;
    return;
  }
  if (external_ && phase_ == Phase::starting) {
    if (!start_ran_ && start_pid_ == 0) {
      log("check " + what + ": starting it");
      start_child();
      return;
    }
    // Started, not up yet: look again soon, until --ready-timeout.
    next_check_at_ = now + std::min(options_.check_every, milliseconds(100));
    return;
  }
  check_failures_ += 1;
  next_check_at_ = now + options_.check_every;
  log("check " + what + " (" + std::to_string(check_failures_) + " of " + std::to_string(options_.check_fails) + ")");
  if (check_failures_ < options_.check_fails) return;
  check_failures_ = 0;
  const std::string why = "check failed " + std::to_string(options_.check_fails) + " time(s) (last: " + what + ")";
  if (external_) {
    record_.supervision->last_exit = why;
    record_.supervision->last_exit_status = timed_out ? -1 : wait_status_code(status);
    const auto ran = now - started_at_;
    if (ran >= options_.healthy_after) failures_ = 0;
    next_check_at_ = Clock::time_point::max();
    schedule_start(why);
    return;
  }
  begin_stop(SIGTERM, After::restart_backoff, why + ": stopping pid " + std::to_string(main_) + " to restart it");
}

void Supervisor::become_ready() {
  if (phase_ != Phase::starting) return;
  probe_.reset();
  next_probe_ = Clock::time_point::max();
  ready_deadline_ = Clock::time_point::max();
  record_.state = RecordState::ready;
  record_.ready_unix_ns = sys::realtime_ns();
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  set_state(Phase::ready, "ready");
  if (!options_.check_command.empty()) next_check_at_ = Clock::now() + options_.check_every;
  decide(external_ ? "check passes: ready" : "pid " + std::to_string(main_) + " is ready");
  write();
  if (upstream_.active()) {
    upstream_.send("READY=1\nMAINPID=" + std::to_string(self_) + "\nSTATUS=" + name_ + ": pid " + std::to_string(main_) + " ready\n");
    upstream_ready_sent_ = true;
  }
}

// After an unexpected exit or a failed start: the next start after the backoff. The failure count
// is reset by a healthy run (one that lasted --healthy-after).
void Supervisor::schedule_start(const std::string& why) {
  const auto now = Clock::now();
  const uint64_t n = failures_;
  // One jitter draw per streak of failures: supervisors restarted together spread apart, while
  // each one's delays never decrease within a streak.
  if (n == 0) jitter_unit_ = random_unit();
  failures_ += 1;
  const auto delay = options_.backoff.delay(n, jitter_unit_);
  start_at_ = now + delay;
  set_state(Phase::backoff, "backoff");
  record_.state = RecordState::starting;
  record_.process.pid = 0;
  record_.supervision->next_attempt_unix_ns = sys::realtime_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(delay).count();
  decide(why + ": restarting in " + ms_text(delay) + " (backoff, failure " + std::to_string(failures_) + ")");
  if (!external_) {
    record_.attempt = sys::random_u64() | 1;  // the next start's, published now (see start_child)
    attempt_published_ = true;
  }
  write();
}

void Supervisor::begin_stop(int sig, After after, const std::string& why) {
  after_ = after;
  kill_helpers();
  if (external_) {
    // Never a signal to the external thing; the stop command, if any, when asked to stop.
    start_at_ = ready_deadline_ = Clock::time_point::max();
    decide(why);
    if (after == After::finish && !options_.stop_command.empty() && stop_pid_ == 0) {
      try {
        stop_pid_ = spawn_shell(options_.stop_command);
        log("ran the stop command: " + options_.stop_command);
      } catch (const Error& e) {
        log(std::string("stop command could not run: ") + e.what());
      }
    }
    if (instance_gone()) {
      after_instance_gone();
      return;
    }
    set_state(Phase::stopping, "stopping");
    write();
    return;
  }
  if (phase_ == Phase::backoff || phase_ == Phase::paused || instance_gone()) {
    start_at_ = Clock::time_point::max();
    decide(why);
    after_instance_gone();
    return;
  }
  if (phase_ != Phase::stopping) {
    kill_at_ = Clock::now() + options_.kill_after;
    killed_ = false;
  }
  set_state(Phase::stopping, "stopping");
  probe_.reset();
  next_probe_ = ready_deadline_ = watchdog_deadline_ = Clock::time_point::max();
  decide(why);
  write();
  signal_instance(sig);
  // A stopped (SIGSTOP) process acts on the signal only once continued, as systemd does.
  if (sig != SIGKILL && sig != SIGCONT) signal_instance(SIGCONT);
  if (sig == SIGKILL) killed_ = true;
}

void Supervisor::after_instance_gone() {
  const After after = after_;
  after_ = After::none;
  kill_at_ = Clock::time_point::max();
  switch (after) {
    case After::finish: finish(0, "stopped", record_.supervision->decision); return;
    case After::restart_now:
      failures_ = 0;
      starts_.clear();
      start_child();
      return;
    case After::restart_backoff: schedule_start(record_.supervision->decision); return;
    case After::none: break;
  }
  // The main process ended by itself: the policy decides.
  const auto& v = *record_.supervision;
  const bool clean = v.last_exit_status == 0;
  if (options_.restart == RestartPolicy::never) {
    finish(0, "stopped", "main process " + v.last_exit + ": --restart never: not restarting");
    return;
  }
  if (options_.restart == RestartPolicy::on_failure && clean) {
    finish(0, "stopped", "main process " + v.last_exit + ": --restart on-failure: not restarting a clean exit");
    return;
  }
  schedule_start("main process " + v.last_exit);
}

void Supervisor::on_main_exit(std::optional<int> status) {
  const pid_t pid = main_;
  main_ = 0;
  main_pidfd_.reset();
  ready_r_.reset();
  auto& v = *record_.supervision;
  v.last_exit = status ? describe_wait_status(*status) : "exited (status unknown: not our child)";
  v.last_exit_status = status ? wait_status_code(*status) : -1;
  record_.exit_status = v.last_exit_status;
  record_.attempt_ended_boot_ns = sys::boottime_ns();
  const auto ran = Clock::now() - started_at_;
  if (ran >= options_.healthy_after && phase_ != Phase::starting) {
    if (failures_ > 0) log("pid " + std::to_string(pid) + " ran " + ms_text(ran) + " (healthy): backoff reset");
    failures_ = 0;
  }
  if (phase_ == Phase::stopping) {
    log("pid " + std::to_string(pid) + " " + v.last_exit);
  } else {
    if (phase_ == Phase::starting) ready_deadline_ = Clock::time_point::max();
    log("pid " + std::to_string(pid) + " " + v.last_exit + " after " + ms_text(ran));
    // Processes it left behind belong to the instance that just ended: stop them first.
    if (has_children()) {
      begin_stop(SIGTERM, After::none, "main process " + v.last_exit + ": stopping the processes it left");
      return;
    }
  }
  if (instance_gone()) after_instance_gone();
}

void Supervisor::reap() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    if (pid == main_ && main_is_child_) on_main_exit(status);
    else if (pid == check_pid_) on_check_exit(status);
    else if (pid == start_pid_) on_start_command_exit(status);
    else if (pid == stop_pid_) {
      stop_pid_ = 0;
      log("stop command " + describe_wait_status(status));
    }
    if (done_) return;
  }
  if (phase_ == Phase::stopping && instance_gone()) after_instance_gone();
}

void Supervisor::finish(int code, const std::string& state, const std::string& why) {
  record_.supervision->state = state;
  record_.supervision->decision = why;
  record_.supervision->next_attempt_unix_ns = 0;
  log(why);
  record_.state = code == 0 ? RecordState::stopped : RecordState::failed;
  if (code != 0) {
    record_.failure = why;
    record_.failure_kind = FailureKind::exited;
  } else {
    record_.failure = "stopped: " + why;
  }
  done_ = SuperviseResult{code, name_ + ": " + why};
}

void Supervisor::keep_and_leave(const std::string& why) {
  if (main_ == 0) {
    begin_stop(SIGTERM, After::finish, why + ": no process to keep");
    return;
  }
  record_.supervision->state = "kept";
  record_.supervision->keep = true;
  decide(why + ": pid " + std::to_string(main_) + " left running; holdfast supervise " + name_ + " adopts it");
  done_ = SuperviseResult{0, name_ + ": supervisor stopped, pid " + std::to_string(main_) + " keeps running"};
}

void Supervisor::on_control(int value) {
  const int sig = value & 0xffff;
  const auto mode = static_cast<ControlMode>(value >> 16);
  if (sig < 0 || sig >= NSIG) return;
  switch (mode) {
    case ControlMode::stop:
      if (phase_ == Phase::stopping && after_ == After::finish) {
        signal_instance(sig);  // stop's --kill-after escalation
        if (sig == SIGKILL) killed_ = true;
      } else {
        begin_stop(sig, After::finish, "stop requested (" + std::string(sigabbrev_np(sig) ? sigabbrev_np(sig) : "?") + ")");
      }
      break;
    case ControlMode::signal_main:
      if (main_pidfd_) sys::pidfd_signal_nothrow(main_pidfd_.get(), sig);
      break;
    case ControlMode::keep: keep_and_leave("stop --keep requested"); break;
    case ControlMode::restart:
      begin_stop(SIGTERM, After::restart_now, "restart requested");
      break;
  }
}

void Supervisor::on_signals() {
  signalfd_siginfo si{};
  while (::read(signal_fd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    const int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGCHLD) continue;
    if (sig == control_signal()) {
      on_control(si.ssi_int);
    } else if (sig == SIGHUP) {
      if (main_pidfd_) sys::pidfd_signal_nothrow(main_pidfd_.get(), SIGHUP);
    } else if (options_.keep) {
      keep_and_leave(std::string(sigabbrev_np(sig)) + " received with --keep");
    } else if (!(phase_ == Phase::stopping && after_ == After::finish)) {
      begin_stop(SIGTERM, After::finish, std::string("SIG") + sigabbrev_np(sig) + " received: stopping the instance");
    }
    if (done_) return;
  }
  reap();
}

void Supervisor::on_notify() {
  int rejected = 0;
  for (const auto& m : notify_->receive(self_, rejected, main_is_child_ ? 0 : main_)) {
    if (m.main_pid > 0 && m.main_pid != main_) {
      if (is_descendant(m.main_pid, self_)) {
        int fd = sys::pidfd_open_nothrow(m.main_pid);
        auto id = identity_of(m.main_pid);
        if (fd >= 0 && id) {
          main_pidfd_.reset(fd);
          main_ = m.main_pid;
          record_.process = *id;
          log("MAINPID=" + std::to_string(main_) + ": following it as the main process");
        } else if (fd >= 0) {
          ::close(fd);
        }
      } else {
        log("ignored MAINPID=" + std::to_string(m.main_pid) + ": not a process of the instance");
      }
    }
    if (m.has_status) record_.status = m.status;
    if (m.ready) ready_seen_ = true;
    if (m.watchdog && options_.watchdog && phase_ != Phase::stopping) {
      watchdog_deadline_ = Clock::now() + *options_.watchdog;
      if (upstream_.watchdog()) upstream_.send("WATCHDOG=1\n");
    }
    if (m.watchdog_trigger && phase_ != Phase::stopping && main_ > 0) {
      last_run_failed_ = true;
      begin_stop(SIGTERM, After::restart_backoff, "WATCHDOG=trigger from pid " + std::to_string(m.sender) + ": restarting");
    }
  }
  if (rejected > 0) log(rejected_notifications(rejected));
}

void Supervisor::on_ready_pipe() {
  if (read_ready_pipe(ready_r_)) ready_seen_ = true;
}

void Supervisor::check_watchdog(Clock::time_point now) {
  if (now < watchdog_deadline_ || main_ == 0) return;
  if (!options_.heartbeat_file.empty()) {
    // The heartbeat's mtime (CLOCK_REALTIME) counts from its age now.
    struct stat st {};
    if (::stat(options_.heartbeat_file.c_str(), &st) == 0) {
      const int64_t mtime = sys::mtime_ns(st);
      const auto age = std::chrono::nanoseconds(std::max<int64_t>(0, sys::realtime_ns() - mtime));
      if (age < *options_.watchdog && mtime >= record_.spawned_unix_ns - 1000000000) {
        watchdog_deadline_ = now + (*options_.watchdog - std::chrono::duration_cast<milliseconds>(age));
        return;
      }
    }
    begin_stop(SIGTERM, After::restart_backoff,
               "watchdog: heartbeat " + options_.heartbeat_file + " not touched for " + ms_text(*options_.watchdog) +
                   ": stopping pid " + std::to_string(main_) + " to restart it");
    return;
  }
  begin_stop(SIGTERM, After::restart_backoff,
             "watchdog: no WATCHDOG=1 from pid " + std::to_string(main_) + " for " + ms_text(*options_.watchdog) +
                 ": stopping it to restart it");
}

void Supervisor::on_timer() {
  uint64_t expirations = 0;
  (void)::read(timer_fd_.get(), &expirations, sizeof expirations);
  const auto now = Clock::now();
  if (phase_ == Phase::stopping && !killed_ && now >= kill_at_) {
    log("still running " + ms_text(options_.kill_after) + " after the stop signal: SIGKILL");
    signal_instance(SIGKILL);
    killed_ = true;
    kill_at_ = Clock::time_point::max();
  }
  if ((phase_ == Phase::backoff || phase_ == Phase::paused) && now >= start_at_) {
    start_at_ = Clock::time_point::max();
    start_child();
    return;
  }
  if (phase_ == Phase::starting && probe_ && now >= next_probe_) {
    if (probe_->ready()) ready_seen_ = true;
    next_probe_ = now + kProbeInterval;
  }
  if (phase_ == Phase::starting && !ready_seen_ && now >= ready_deadline_) {
    begin_stop(SIGTERM, After::restart_backoff,
               "not ready after " + ms_text(options_.base.ready_timeout) + ": stopping pid " + std::to_string(main_));
    return;
  }
  if (phase_ == Phase::starting || phase_ == Phase::ready) check_watchdog(now);
  const bool checking = phase_ == Phase::ready || (external_ && phase_ == Phase::starting && start_pid_ == 0);
  if (!options_.check_command.empty() && checking && now >= next_check_at_) {
    if (check_pid_ != 0) {
      check_timed_out_ = true;
      ::kill(-check_pid_, SIGKILL);  // our unreaped child: its group id is still its own
      next_check_at_ = Clock::time_point::max();
    } else {
      try {
        check_pid_ = spawn_shell(options_.check_command);
      } catch (const Error& e) {
        log(std::string("check could not run: ") + e.what());
      }
      next_check_at_ = now + options_.check_every;
    }
  }
  if (now >= upstream_ping_at_) {
    upstream_.send("WATCHDOG=1\n");
    upstream_ping_at_ = now + std::chrono::duration_cast<Clock::duration>(*upstream_.watchdog() / 2);
  }
}

void Supervisor::arm_timer() {
  auto next = std::min({kill_at_, start_at_, upstream_ping_at_});
  if (phase_ == Phase::starting) next = std::min({next, next_probe_, ready_deadline_});
  if (phase_ == Phase::starting || phase_ == Phase::ready) next = std::min({next, watchdog_deadline_, next_check_at_});
  itimerspec its{};
  if (next != Clock::time_point::max()) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(next.time_since_epoch()).count();
    ns = std::max<int64_t>(ns, 1);
    its.it_value.tv_sec = static_cast<time_t>(ns / 1000000000);
    its.it_value.tv_nsec = static_cast<long>(ns % 1000000000);
  }
  ::timerfd_settime(timer_fd_.get(), TFD_TIMER_ABSTIME, &its, nullptr);
}

SuperviseResult Supervisor::run() {
  validate_instance_name(name_);
  external_ = !options_.start_command.empty();
  if (external_ && !command_.empty()) {
    throw Error(name_, "supervise", "--start supervises what --check checks: give no COMMAND with it", exit_code::usage);
  }
  if (external_ && options_.check_command.empty()) {
    throw Error(name_, "supervise", "--start needs --check (how to tell the thing is there)", exit_code::usage);
  }
  if (!external_ && command_.empty()) throw Error(name_, "supervise", "no command given", exit_code::usage);
  const std::string dir = resolve_state_dir(options_.base.state_dir);
  require_enforced_locks(dir);
  paths_ = paths_for(dir, name_);
  if (!external_) {
    int exec_err = 0;
    auto exe = sys::find_executable(command_[0], exec_err);
    if (!exe) {
      throw Error(command_[0], "cannot run command",
                  exec_err == ENOENT ? "command not found" : "permission denied (not executable)",
                  exec_err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
    }
    executable_ = absolute(*exe);
  }
  log_path_ = absolute(options_.base.log_path.empty() ? paths_.log : options_.base.log_path);
  log_fd_ = sys::open_or_throw(AT_FDCWD, log_path_, O_WRONLY | O_APPEND | O_CREAT | O_NOCTTY, 0644, "cannot open log");

  acquire();
  setup();
  auto old = read_record(paths_.record);
  record_.name = name_;
  record_.process = ProcessIdentity{0, 0, this_boot_id(), this_host()};
  record_.command = external_ ? std::vector<std::string>{"sh", "-c", options_.start_command} : command_;
  record_.state = RecordState::starting;
  record_.ready_mode = options_.base.ready.to_string();
  record_.log_path = log_path_;
  record_.launcher_pid = self_;
  auto me = identity_of(self_);
  record_.launcher_start_time = me ? me->start_time : 0;
  record_.launcher_lock_fd = instance_fd_.get();
  record_.supervision = SupervisionRecord{};
  record_.supervision->restart = std::string(to_string(options_.restart));
  record_.supervision->keep = options_.keep;
  const bool adopted = !external_ && try_adopt(old);
  if (adopted) {
    record_.state = RecordState::ready;
    set_state(Phase::ready, "ready");
    watch_adopted();
  } else {
    set_state(Phase::starting, "starting");
    if (!external_) {
      record_.attempt = sys::random_u64() | 1;
      attempt_published_ = true;
    }
  }
  // The record names us before we take the instance lock, so nobody pairs the held lock with the
  // previous supervisor's record.
  write();
  int rc = ofd_try_lock(instance_fd_.get());
  if (rc == -EAGAIN) throw Error(name_, "supervise", "already supervised (the instance lock was taken meanwhile)", exit_code::conflict);
  if (rc != 0) throw Error(-rc, paths_.lock, "cannot lock");
  spawn_fd_.reset();  // single flight ends: the instance lock is ours
  if (adopted && upstream_.active()) {
    upstream_.send("READY=1\nMAINPID=" + std::to_string(self_) + "\n");
    upstream_ready_sent_ = true;
  }
  if (external_) {
    // First look: if the thing is already there, it is ready without a start.
    decide("checking: " + options_.check_command);
    next_check_at_ = Clock::now();
  } else if (!adopted) {
    start_child();
  }

  while (!done_) {
    pollfd fds[5];
    nfds_t n = 0;
    fds[n++] = {signal_fd_.get(), POLLIN, 0};
    fds[n++] = {timer_fd_.get(), POLLIN, 0};
    const int pid_slot = main_pidfd_ && !main_is_child_ ? static_cast<int>(n) : -1;
    if (pid_slot >= 0) fds[n++] = {main_pidfd_.get(), POLLIN, 0};
    const int notify_slot = notify_ ? static_cast<int>(n) : -1;
    if (notify_) fds[n++] = {notify_->fd(), POLLIN, 0};
    const int ready_slot = ready_r_ ? static_cast<int>(n) : -1;
    if (ready_r_) fds[n++] = {ready_r_.get(), POLLIN, 0};
    arm_timer();
    if (::poll(fds, n, -1) < 0 && errno != EINTR) throw Error(errno, paths_.lock, "poll");
    if (notify_slot >= 0 && fds[notify_slot].revents != 0) on_notify();
    if (ready_slot >= 0 && fds[ready_slot].revents != 0) on_ready_pipe();
    if (fds[1].revents != 0) on_timer();
    if (!done_ && pid_slot >= 0 && main_pidfd_ && !main_is_child_ && fds[pid_slot].revents != 0) {
      on_main_exit(zombie_exit_status(main_, record_.process.start_time));
    }
    if (!done_ && fds[0].revents != 0) on_signals();
    if (!done_ && ready_seen_ && phase_ == Phase::starting) become_ready();
  }

  // The final record goes in after the instance lock is released but under the spawn lock (as
  // ensure's supervisor does): no new start can write its record before ours lands.
  spawn_fd_ = open_lock_file(paths_.spawn_lock);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  while (::fcntl(spawn_fd_.get(), F_OFD_SETLKW, &fl) != 0 && errno == EINTR) {
  }
  instance_fd_.reset();
  write();
  spawn_fd_.reset();
  if (upstream_.active()) upstream_.send("STOPPING=1\n");
  notify_.reset();
  return *done_;
}

}  // namespace

SuperviseResult supervise(const std::string& name, const std::vector<std::string>& command,
                          const SuperviseOptions& options) {
  return Supervisor(name, command, options).run();
}

}  // namespace holdfast
