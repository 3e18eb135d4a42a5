// Internals of ensure/status/stop shared across src/ensure/*.cpp.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/ensure.hpp"
#include "sys/fd.hpp"

namespace holdfast::ensure_detail {

// ---- state directory (state_dir.cpp) ----

struct Paths {
  std::string dir;
  std::string name;
  std::string lock;        // DIR/NAME.lock — the instance lock (held by the supervisor)
  std::string spawn_lock;  // DIR/NAME.spawn.lock — single flight
  std::string record;      // DIR/NAME.json
  std::string log;         // DIR/NAME.log (default)
  std::string notify;      // DIR/NAME.notify — the sd_notify directory bound last (NotifySocket)
};
Paths paths_for(const std::string& dir, const std::string& name);

// Throws Error(unavailable, 69) naming the directory and its filesystem unless OFD locks are
// enforced there (probe's kernel_lock_verdict; cached per filesystem). A filesystem that cannot
// be tested (read-only, EACCES) is let through: the next open for writing reports the real cause.
void require_enforced_locks(const std::string& dir);

// OFD whole-file write locks (F_OFD_*): owned by the open file description.
// Opens (creating 0644) a lock file read-write, close-on-exec. Throws Error naming the path.
sys::UniqueFd open_lock_file(const std::string& path);
// Takes the write lock without waiting. 0, -EAGAIN if held elsewhere, or -errno.
int ofd_try_lock(int fd) noexcept;
// Whether another open file description holds a lock on the file (F_OFD_GETLK). 1, 0, or -errno.
int ofd_held_elsewhere(int fd) noexcept;
// Whether anyone holds the lock at `path`; false if the file does not exist. Throws Error otherwise.
bool lock_held(const std::string& path);

// ---- records (record.cpp) ----

// nullopt if missing or not a complete record. Retries ESTALE (network filesystems return it for
// a file renamed over while being opened). Throws Error for other read failures.
std::optional<InstanceRecord> read_record(const std::string& path);
// Replaces the record atomically (temp file in the same directory + rename). Throws Error.
void write_record(const std::string& path, const InstanceRecord& record);
// Same, returning 0 or -errno (for the supervisor, which has nobody to throw to).
int write_record_nothrow(const std::string& path, const InstanceRecord& record) noexcept;

// The last `lines` lines of a file (empty if unreadable). Reads at most the final 64 KiB.
std::string log_tail(const std::string& path, int lines = 20);
// "exited with status 3" / "killed by signal 9 (Killed)" for a waitpid status.
std::string describe_wait_status(int status);
// Exit code convention for a wait status: exit code, or 128+signal.
int wait_status_code(int status);

// ---- the instance's processes (tree.cpp) ----

// Every live descendant of `root` (children, grandchildren, ...; not `root` itself), by a scan of
// /proc/PID/stat (readable even for non-dumpable processes). Sorted by start time, earliest first.
struct TreeMember {
  pid_t pid;
  uint64_t start_time;
};
std::vector<TreeMember> descendants_of(pid_t root);
// True if `pid` is a live descendant of `root` (walks the ppid chain).
bool is_descendant(pid_t pid, pid_t root);
// Sends `sig` to every descendant of `root` through a pidfd opened before the membership is
// re-checked, so a recycled pid is never signalled. Returns how many were signalled.
int signal_descendants(pid_t root, int sig);

// ---- verification (shared by ensure, status and stop; verify.cpp) ----

enum class Verdict { verified, refuted, unknown };
struct Verification {
  Verdict verdict = Verdict::refuted;
  std::string reason;  // one line
};
// Checks that the record describes the instance that holds the lock now: the recorded supervisor
// (pid, start time, boot, host) is alive and holds the instance lock on paths.lock, and the
// recorded main process (if any) is alive with its recorded start time and is a descendant of
// that supervisor. `unknown` when /proc cannot tell (another user's supervisor).
Verification verify_instance(const Paths& paths, const InstanceRecord& record);

// True if the record is a supervised instance (holdfast supervise) whose main process is alive
// (pid, start time, boot) — meaningful when nobody holds the instance lock: its supervisor was
// stopped with --keep or killed, and a new supervisor must adopt it rather than start another.
bool runs_unsupervised(const InstanceRecord& record);

// The supervisor's control signal (a real-time signal carrying a request in si_value).
int control_signal() noexcept;
// stop: signal the whole instance and exit once it is gone; signal_main: deliver to the main
// process only; keep and restart: understood by supervisors of `holdfast supervise` only (keep:
// exit, leaving the instance running; restart: stop the main process and start it again now).
enum class ControlMode : int { stop = 1, signal_main = 2, keep = 3, restart = 4 };
inline int control_value(ControlMode mode, int sig) { return (static_cast<int>(mode) << 16) | sig; }

// ---- spawning (supervisor.cpp) ----

struct SpawnPlan {
  Paths paths;
  std::string executable;              // resolved, absolute argv[0]
  std::vector<std::string> argv;
  ReadySpec ready;                     // paths already absolute
  std::string log_path;
  std::vector<std::string> environment;  // the daemon's full environment
  DaemonSettings daemon;
  InstanceRecord record;               // the starting record already written (attempt etc.)
};

// Forks the supervisor (detached: own session, reparented away from the caller) which inherits
// `spawn_lock_fd` and `instance_lock_fd` (both locked by the caller). The supervisor keeps the
// instance lock for the instance's whole life, starts the daemon, waits for its readiness or
// death, and writes the record. Returns once the supervisor runs; the caller then closes its own
// copies of the descriptors. Throws Error(os_error) if fork fails.
void start_supervisor(const SpawnPlan& plan, int spawn_lock_fd, int instance_lock_fd, int log_fd,
                      int null_fd);


// ---- shared by ensure's supervisor and holdfast supervise (spawn_support.cpp) ----

// The daemon's environment: the caller's minus what holdfast sets (NOTIFY_SOCKET, HOLDFAST_INSTANCE*)
// and minus every variable starting with one of `also_strip`, plus `extra` (a later KEY=VALUE
// replaces an inherited KEY).
std::vector<std::string> daemon_environment(const std::vector<std::string>& extra,
                                            std::span<const std::string_view> also_strip = {});
// `path` made absolute against the current directory (unchanged if empty or absolute). Throws Error.
std::string absolute(const std::string& path);
// Reads what is waiting on an fd:N readiness pipe: true if it holds a newline (the daemon is
// ready). At end of file (every writer closed it without a newline) resets `ready_r`.
bool read_ready_pipe(sys::UniqueFd& ready_r);
// Blocks the signals a supervisor handles (SIGCHLD, SIGTERM, SIGINT, SIGHUP, control_signal()),
// ignores SIGPIPE, and returns a non-blocking signalfd for the blocked ones (empty, errno set, if
// it cannot be created).
sys::UniqueFd supervisor_signal_fd();
// The log line for `rejected` sd_notify datagrams from processes outside the instance.
std::string rejected_notifications(int rejected);
}  // namespace holdfast::ensure_detail

namespace holdfast::ensure_detail {
// The status of the instance at `paths` (status.cpp; also used by stop).
InstanceStatus status_at(const Paths& paths);
// Opens a pidfd on the record's supervisor and re-checks its start time (stop.cpp), so a request
// through it reaches the verified supervisor or nobody. Empty: it exited in between. Throws
// Error(data) if the pid now belongs to another process.
sys::UniqueFd pin_supervisor(const Paths& paths, const InstanceRecord& rec);
// Sends a control request (ControlMode + signal) through the supervisor's pidfd (stop.cpp).
void send_request(int pidfd, const Paths& paths, ControlMode mode, int sig);
}  // namespace holdfast::ensure_detail
