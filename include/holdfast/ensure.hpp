// holdfast::ensure_running — exactly one instance of a command, started on demand, verified ready.
//
// Model (FreeBSD pidfile(3) + daemon(8), with a kernel lock instead of a pid on faith):
//   STATE/NAME.lock        the instance lock. An OFD write lock held by the instance's supervisor
//                          for the instance's whole life. The supervisor is a small resident
//                          process (a child subreaper) that starts the daemon and stays until the
//                          last process of the instance — the daemon and every descendant,
//                          double-forked or not — has exited. The lock therefore never depends on
//                          the daemon keeping a descriptor (daemons that close every inherited fd,
//                          daemon(3), nohup-style wrappers are all one instance).
//                          "Is an instance running?" is "is this lock held?" (F_OFD_GETLK).
//   STATE/NAME.spawn.lock  single flight: held by whoever is starting an instance, from the
//                          re-check until the instance is ready or has failed.
//   STATE/NAME.json        the record: identity of the instance, command, readiness, failure.
//                          Replaced atomically (temp file + rename).
//   STATE/NAME.log         stdout and stderr of the instance, appended.
//
// Who waits for readiness: the client that wins the spawn lock forks the supervisor (own session,
// reparented away from the client) that inherits both locks, spawns the daemon, receives its
// readiness (sd_notify datagram with checked credentials, a newline on fd N, a socket listener
// owned by the instance, a file created after this start), writes the record and drops the spawn
// lock. Killing any client — even the spawning one — neither releases the instance lock nor loses
// the readiness report. Every client polls the record until ready, failed, or its own timeout.
// `stop` asks the verified supervisor to signal the whole instance. See docs/ENSURE.md.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"

namespace holdfast {

// How an instance says it is ready.
struct ReadySpec {
  enum class Kind { none, notify, fd, tcp, unix_socket, file };
  Kind kind = Kind::none;
  int fd = -1;        // fd:N — the daemon writes a newline to fd N (s6 notification-fd)
  std::string host;   // tcp:HOST:PORT — accepting connections
  uint16_t port = 0;
  std::string path;   // unix:PATH accepting connections; file:PATH exists

  // Parses "none", "notify", "fd:N" (3 <= N < RLIMIT_NOFILE), "tcp:HOST:PORT" (HOST may be [v6]),
  // "unix:PATH", "file:PATH" (relative paths are made absolute against the current directory, so
  // every client means the same file). Throws Error(exit_code::usage) naming the text otherwise.
  static ReadySpec parse(std::string_view text);
  std::string to_string() const;
  // True for tcp: with a host name rather than an IPv4 or IPv6 address: resolving it takes the
  // name service (nsswitch.conf), which only a dynamically linked process may use.
  bool needs_name_service() const noexcept;
};

// How the daemon is started (start-stop-daemon / systemd conventions). The supervisor itself
// keeps the caller's identity; only the daemon gets these.
struct DaemonSettings {
  std::string chdir = "/";              // working directory ("" keeps the caller's)
  std::optional<mode_t> umask = 022;    // nullopt keeps the caller's
  std::optional<uid_t> uid;             // drop privileges to this user (after the lock is taken)
  std::optional<gid_t> gid;             // and group; supplementary groups become `groups`
  std::vector<gid_t> groups;
  uint64_t log_max_bytes = 0;           // > 0: rotate NAME.log to NAME.log.1 past this size
};

struct EnsureOptions {
  ReadySpec ready;
  DaemonSettings daemon;
  // How long this call waits for readiness (including waiting for another client's spawn).
  std::chrono::milliseconds ready_timeout{30000};
  std::string state_dir;  // empty: default_state_dir()
  std::string log_path;   // empty: STATE/NAME.log
  // Extra environment for the command ("KEY=VALUE"), on top of this process's environment.
  std::vector<std::string> environment;
};

enum class RecordState { starting, ready, failed, stopped };
std::string_view to_string(RecordState state) noexcept;

// Why a start failed, as a field (never inferred from the message).
enum class FailureKind { none, not_found, cannot_exec, setup, exited, supervisor };
std::string_view to_string(FailureKind kind) noexcept;

// What `holdfast supervise` adds to the record (docs/SUPERVISE.md): its restart decisions, so
// `status` shows them. Absent from an instance started by ensure.
struct SupervisionRecord {
  std::string state;              // starting, ready, backoff, paused, stopping, stopped, kept,
                                  // given-up (see docs/SUPERVISE.md)
  std::string restart;            // the policy: always, on-failure, never
  uint64_t starts = 0;            // processes started by this supervisor
  uint64_t restarts = 0;          // starts after the first (by this supervisor)
  std::string last_exit;          // "exited with status 3", "killed by signal 9 (Killed)"; "" if none
  int last_exit_status = -1;      // exit code or 128+signal; -1 if none or unknown
  int64_t next_attempt_unix_ns = 0;  // backoff/paused: when the next start is due (wall clock)
  std::string decision;           // the last decision and its reason, one line
  bool adopted = false;           // the main process was adopted from an earlier supervisor: it is
                                  // not this supervisor's descendant, it is watched by a pidfd
  bool keep = false;              // stopping the supervisor leaves the instance running
};

// What STATE/NAME.json says. Serialised as one JSON object.
struct InstanceRecord {
  std::string name;
  ProcessIdentity process;            // the daemon's main process (after MAINPID= or a double
                                      // fork: the new main process); pid 0 before it is spawned
  std::vector<std::string> command;
  RecordState state = RecordState::starting;
  std::string ready_mode;             // ReadySpec::to_string()
  std::string status;                 // last STATUS= from sd_notify, if any
  uint64_t attempt = 0;               // random id of the spawn that produced this record
  int64_t spawned_unix_ns = 0;        // wall clock when the daemon was forked
  int64_t ready_unix_ns = 0;          // wall clock when readiness was received (0 if not ready)
  int64_t attempt_started_boot_ns = 0;  // CLOCK_BOOTTIME, comparable across processes
  int64_t attempt_ended_boot_ns = 0;    // ready or failed (0 while starting)
  pid_t launcher_pid = 0;             // the supervisor (holds the instance lock)
  uint64_t launcher_start_time = 0;   // its /proc start time (identity with pid, boot, host)
  int launcher_lock_fd = -1;          // its descriptor holding the instance lock (fast check)
  bool forked = false;                // the command's first process exited 0 and left descendants
                                      // (a self-daemonizing command): `process` is the new main
  std::string failure;                // one line, when state == failed (or why it stopped)
  FailureKind failure_kind = FailureKind::none;
  int exit_status = -1;               // failed: exit code, or 128+signal; -1 if not applicable
  std::string log_path;
  std::optional<SupervisionRecord> supervision;  // set by `holdfast supervise`

  std::string to_json() const;
  // nullopt if `text` is not a complete record.
  static std::optional<InstanceRecord> parse(std::string_view text);
};

// The result of ensure_running: the verified, ready instance.
struct Instance {
  std::string name;
  pid_t pid = 0;
  uint64_t start_time = 0;
  bool ready = false;
  bool started = false;                  // true if this call spawned it
  std::chrono::nanoseconds waited{0};    // time spent in ensure_running
  InstanceRecord record;
};

// A start that failed before readiness: what() is one line naming the instance and cause;
// exit_code() is exit_code::conflict (1) for "exited/killed before ready", not_found (127) or
// cannot_exec (126) when the command could not be executed. log_tail holds the last lines of the
// instance's log (for the caller to show).
class StartFailure : public Error {
 public:
  StartFailure(std::string name, const std::string& cause, int exit, int exit_status, std::string log_tail);
  int exit_status() const noexcept { return exit_status_; }  // -1 if it never ran
  const std::string& log_tail() const noexcept { return log_tail_; }

 private:
  int exit_status_;
  std::string log_tail_;
};

// Ensures exactly one instance named `name` runs `command` (argv; argv[0] looked up in PATH) and
// is ready. Returns at once if a verified instance is ready (whatever its command); waits if one
// is starting; otherwise takes the spawn lock, re-checks, and starts it. Concurrent callers, in any
// processes, get the same instance; at most one spawns.
// Throws: Error(usage) for a bad name or empty command; StartFailure if the instance (this call's
// spawn, or a concurrent one this call waited for) failed before ready; Error(temp_fail) if not
// ready within options.ready_timeout (the instance keeps starting); Error for state-dir failures.
Instance ensure_running(const std::string& name, const std::vector<std::string>& command,
                        const EnsureOptions& options = {});

// ---- inspecting and stopping ----

enum class InstanceState {
  ready,     // lock held, record ready and verified (supervisor holds the lock, main process is its)
  running,   // lock held, starting (not ready yet)
  stopped,   // lock free; no record, or the record says stopped/failed
  stale,     // lock free but the record says starting/ready: it died without cleanup
  unknown,   // lock held but the record does not verify or cannot be checked: never signalled
};
std::string_view to_string(InstanceState state) noexcept;

struct InstanceStatus {
  std::string name;
  InstanceState state = InstanceState::stopped;
  bool lock_held = false;
  std::optional<InstanceRecord> record;
  std::string reason;  // one line
};

// The status of one instance (never takes any lock). Throws Error(usage) for a bad name.
InstanceStatus instance_status(const std::string& name, const std::string& state_dir = "");
// The status of every instance with a lock file or record in the state directory, by name.
std::vector<InstanceStatus> list_instances(const std::string& state_dir = "");

struct StopOptions {
  std::string state_dir;
  int signal = SIGTERM;                      // any signal, 0 included (with wait = false)
  std::chrono::milliseconds timeout{10000};  // wait this long for the instance lock to be released
  // If set: SIGKILL every process of the instance if it still runs this long after the signal.
  std::optional<std::chrono::milliseconds> kill_after;
  // false: signal-only (reload) mode — deliver `signal` to the main process and return.
  bool wait = true;
  // Supervised instances only: stop the supervisor and leave the instance running (systemd's
  // KillMode=process); a later `holdfast supervise NAME` adopts it.
  bool keep = false;
};

struct StopResult {
  bool was_running = false;   // an instance held the lock
  pid_t pid = 0;              // the process signalled (0 if none)
  bool killed = false;        // SIGKILL was sent
  std::chrono::nanoseconds waited{0};
  std::string message;        // one line
};

// Stops the verified instance. Verification (the same as ensure and status): the record's
// supervisor matches its pid, start time, boot and host and holds the instance lock, and the
// recorded main process is its descendant. Then the request goes through a pidfd on the
// supervisor (re-checked after opening, so a recycled pid is never signalled); the supervisor
// sends `signal` to every process of the instance (its descendants: process groups and double
// forks included), and, after kill_after, SIGKILL. Waits for the instance lock to be released,
// which happens when the last process of the instance is gone. While the instance is starting
// and its supervisor has not recorded itself yet, waits for it (bounded by the timeout).
// With wait = false, delivers `signal` to the main process only and returns.
// Returns normally if nothing runs (was_running = false).
// Throws Error(data) if the lock is held but the record does not verify (never signals then);
// Error(temp_fail) if the instance still holds the lock after the timeout.
StopResult stop_instance(const std::string& name, const StopOptions& options = {});

// ---- state directory and names ----

// $XDG_RUNTIME_DIR/holdfast, else /run/holdfast for root, else /tmp/holdfast-UID. Created 0700 if
// missing; refused (Error no_perm) unless it is a real directory owned by this user and not
// writable by group or others.
std::string default_state_dir();
// `dir` (created with parents, 0700, if missing) or default_state_dir() if empty.
std::string resolve_state_dir(const std::string& dir);
// Throws Error(usage) unless `name` matches [A-Za-z0-9._-]{1,64} and does not start with '.'.
void validate_instance_name(std::string_view name);

}  // namespace holdfast
