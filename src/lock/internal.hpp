// Internals shared by the lock backends. Not installed.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "holdfast/lock.hpp"
#include "lock/fence.hpp"
#include "sys/current_pid.hpp"
#include "sys/fd.hpp"

namespace holdfast::lock_internal {

using Clock = std::chrono::steady_clock;

// How long an acquire may wait.
struct WaitSpec {
  enum Kind { none, forever, until } kind = forever;
  Clock::time_point deadline{};
  bool expired() const { return kind == none || (kind == until && Clock::now() >= deadline); }
};

// A lock path, checked and split once.
struct Target {
  std::string path;
  std::string dir;
  std::string base;
  // O_NOFOLLOW when the directory is sticky and world-writable (like /tmp): there, anyone can
  // plant a symlink named like our lock to redirect us to a file of their choosing.
  int extra_open_flags = 0;
};

// Validates the parent directory (exists, is a directory) and decides the symlink policy.
Target resolve_target(const std::string& path);

// Throws the one-line Error for a failed open of a lock (or lock-related) file.
[[noreturn]] void throw_open_error(int err, const Target& target, const std::string& file);

// Refreshes the mtime of a dotlock every lease/3 so other hosts can tell it is alive.
class Heartbeat {
 public:
  Heartbeat(int fd, std::chrono::milliseconds lease);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// A fresh record for this process (token filled in by the backend). The command is capped.
HolderRecord make_record(Backend backend, LockMode mode, const LockOptions& options);

// Writes `record` at offset 0 of `fd`, padded with spaces to at least `file_size` so the file
// never needs truncating (a shorter rewrite would otherwise leave a tail of the old record).
// Only for files holdfast created itself. Updates `file_size`. Returns 0 or -errno.
int write_record(int fd, const HolderRecord& record, off_t& file_size);

// Sleeps for the next poll interval (1 ms doubling to 25 ms, with jitter), never past `wait`'s
// deadline. Returns false if the deadline has passed.
bool poll_sleep(const WaitSpec& wait, int& attempt);

// ---- side state of kernel locks (state_dir.cpp) ----
//
// A kernel lock's holder record and fencing state never live in or beside the user's lock file:
// they live in the state directory, named after the lock file's identity (device, inode and
// birth time, so a recycled inode number does not inherit another file's state).

// $HOLDFAST_STATE_DIR, else /var/tmp/holdfast.
std::string state_directory();

struct SideStatePaths {
  std::string fence;   // fencing-token state (fence.hpp layout)
  std::string record;  // the current exclusive holder's record
  uid_t lock_owner = 0;
  mode_t mode = 0644;  // for new state files: the lock file's permission bits, at most 0666
  bool may_create = false;  // root, the lock file's owner, or anyone if it is world-writable
};

// The state paths for the lock file open at `lock_fd` (whose fstat is `st`). nullopt, with a
// one-line reason in `why`, if the state directory cannot be used safely (not creatable, not a
// directory, a symlink, owned by someone else, world-writable without the sticky bit).
std::optional<SideStatePaths> side_state_for(int lock_fd, const struct stat& st, std::string* why);

// Opens (creating if absent, when allowed) a state file for writing: O_NOFOLLOW, a regular file
// owned by root, us or the lock file's owner. Returns the fd or -errno (-EPERM: untrusted);
// sets *created when this call created it.
int open_state_file(const SideStatePaths& paths, const std::string& file, bool* created = nullptr);

}  // namespace holdfast::lock_internal

namespace holdfast {

namespace lock_internal {
struct OpenFiles;
struct ShmMapping;
}

// A grant: what one acquisition took. Each backend's grant releases exactly what it took, on
// every path — its destructor releases whatever is still held — so no caller cleans up by hand.
// Only the process that took a grant releases it: a forked child's copy (fork() duplicates the
// Lock) only closes its descriptors, and never unlocks the parent's lock or removes its files.
struct Lock::State {
  State(lock_internal::Target where, Backend kind, LockMode how, HolderRecord initial)
      : target(std::move(where)), backend(kind), mode(how), record(std::move(initial)) {}
  virtual ~State();
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Releases the lock; throws holdfast::Error if it turned out to be lost (dotlock reclaimed).
  // After it returns or throws, held() is false.
  virtual void release() = 0;
  // Forgets the lock without releasing it (see Lock::detach).
  virtual void detach() noexcept = 0;
  // Adds `process` to the record and rewrites it.
  virtual void add_holder_process(const ProcessIdentity& process) = 0;
  // The locked descriptor (kernel) or the lock file (dotlock); -1 once released.
  virtual int fd() const noexcept = 0;

  bool held() const noexcept { return held_; }

  const lock_internal::Target target;
  const Backend backend;
  const LockMode mode;
  HolderRecord record;
  // What the grant was taken through: a LockFile's open files (shared with it), or files opened
  // for this grant alone. While a grant lives, files->busy is set so that the LockFile does not
  // grant again (a second lock on the same open file description would be a silent no-op).
  std::shared_ptr<lock_internal::OpenFiles> files;

 protected:
  bool in_owner_process() const noexcept { return sys::current_pid() == owner_pid_; }
  bool held_ = true;

 private:
  const pid_t owner_pid_ = sys::current_pid();
};

namespace lock_internal {
// What a LockFile keeps open between acquisitions, so a repeated lock costs only the lock itself.
// Kept by a LockFile between acquisitions (so a repeated lock costs only the lock itself), or
// made for one acquisition by Lock's static functions (`per_grant`: closed when the grant ends).
struct OpenFiles {
  bool per_grant = true;
  bool busy = false;      // a grant taken through these files is alive
  sys::UniqueFd lock_fd;  // kernel backends: the lock file
  struct stat st {};      // its inode
  int access = -1;        // O_RDONLY / O_WRONLY / O_RDWR it was opened with
  bool side_state_checked = false;
  std::optional<SideStatePaths> side_state;  // kernel backends; nullopt: unavailable
  std::string side_state_why;
  sys::UniqueFd record_fd;  // kernel backends: the record file in the state directory
  off_t record_size = 0;
  std::optional<fence::FenceFile> fence;
  std::shared_ptr<ShmMapping> shm;  // shm backend: the validated mapping
};

// Return null if the wait ended without the lock. Throw holdfast::Error.
std::unique_ptr<Lock::State> kernel_acquire(const Target& target, Backend backend, const LockOptions& options,
                                            const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files);
std::unique_ptr<Lock::State> dotlock_acquire(const Target& target, Backend backend, const LockOptions& options,
                                             const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files);
}  // namespace lock_internal

}  // namespace holdfast

namespace holdfast::lock_internal {
// Judges the dotlock file at `path` the way a waiter would (held / stale), for inspection.
// Returns free if the file vanished meanwhile.
std::pair<HolderState, std::string> judge_dotlock(const std::string& path);

// The record of the kernel lock on the file open at `fd` (from the state directory); nullopt if
// there is none.
std::optional<HolderRecord> read_side_record(int fd, const struct stat& st);
}  // namespace holdfast::lock_internal
