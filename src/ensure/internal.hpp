// Internals of ensure/status/stop shared across src/ensure/*.cpp.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"
#include "sys/fd.hpp"

namespace holdfast::ensure_detail {

struct Paths {
  std::string dir;
  std::string name;
  std::string lock;        // DIR/NAME.lock — the instance lock
  std::string spawn_lock;  // DIR/NAME.spawn.lock — single flight
  std::string record;      // DIR/NAME.json
  std::string log;         // DIR/NAME.log (default)
  std::string notify;      // DIR/NAME.notify — sd_notify socket while starting
};
Paths paths_for(const std::string& dir, const std::string& name);

// ---- OFD whole-file write locks (F_OFD_*): owned by the open file description, so they are
// shared with forked children and exec'd programs that inherit the fd, and released when the
// last descriptor of the description closes.

// Opens (creating 0644) a lock file read-write, close-on-exec. Throws Error naming the path.
sys::UniqueFd open_lock_file(const std::string& path);
// Takes the write lock without waiting. 0, -EAGAIN if held elsewhere, or -errno.
int ofd_try_lock(int fd) noexcept;
// Whether another open file description holds a lock on the file (F_OFD_GETLK; a lock held by
// `fd`'s own description does not count). 1 held, 0 free, or -errno.
int ofd_held_elsewhere(int fd) noexcept;
// Whether anyone holds the lock at `path`; false if the file does not exist.
// Throws Error for other open failures.
bool lock_held(const std::string& path);

// ---- records ----
std::optional<InstanceRecord> read_record(const std::string& path);
// Replaces the record atomically (temp file in the same directory + rename). Throws Error.
void write_record(const std::string& path, const InstanceRecord& record);
// Same, returning 0 or -errno (for the launcher, which has nobody to throw to).
int write_record_nothrow(const std::string& path, const InstanceRecord& record) noexcept;

// The last `lines` lines of a file (empty if unreadable). Reads at most the final 64 KiB.
std::string log_tail(const std::string& path, int lines = 20);

// "exited with status 3" / "killed by signal 9 (Killed)" for a waitpid status.
std::string describe_wait_status(int status);
// Exit code convention for a wait status: exit code, or 128+signal.
int wait_status_code(int status);

// True if the recorded process is verified alive (judge_liveness == alive).
bool verified_alive(const InstanceRecord& record);

// ---- spawning (launcher.cpp) ----
struct SpawnPlan {
  Paths paths;
  std::string executable;              // resolved argv[0]
  std::vector<std::string> argv;
  ReadySpec ready;
  std::string log_path;
  std::vector<std::string> environment;  // extra KEY=VALUE
  InstanceRecord record;               // the starting record already written (attempt etc.)
};

// Forks the launcher (detached: own session, reparented to init) which inherits `spawn_lock_fd`
// and `instance_lock_fd` (both locked by the caller), starts the daemon, waits for its readiness
// or death, writes the record, and exits. `log_fd` and `null_fd` become its stdio. Returns when
// the launcher runs; the caller should then close its own copies of the descriptors.
// Throws Error(os_error) if fork fails.
void start_launcher(const SpawnPlan& plan, int spawn_lock_fd, int instance_lock_fd, int log_fd,
                    int null_fd);

// Probes a connect/file readiness condition once (tcp, unix, file). True if ready.
bool probe_ready(const ReadySpec& ready);

}  // namespace holdfast::ensure_detail
