// Internals shared by the lock backends. Not installed.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "holdfast/lock.hpp"
#include "lock/fence.hpp"
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
  // plant a symlink named like our lock to make us create or truncate a file of their choosing.
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

// A fresh record for this process (token filled in by the backend).
HolderRecord make_record(Backend backend, LockMode mode, const LockOptions& options);

// Writes `record` at offset 0 of `fd`, padded with spaces to at least `file_size` so the file
// never needs truncating (a shorter rewrite would otherwise leave a tail of the old record).
// Updates `file_size`. Returns 0 or -errno.
int write_record(int fd, const HolderRecord& record, off_t& file_size);

// Sleeps for the next poll interval (1 ms doubling to 25 ms, with jitter), never past `wait`'s
// deadline. Returns false if the deadline has passed.
bool poll_sleep(const WaitSpec& wait, int& attempt);

}  // namespace holdfast::lock_internal

namespace holdfast {

struct Lock::State {
  // The lock descriptor: owned, or borrowed from the LockFile the lock was taken through.
  int descriptor() const { return fd ? fd.get() : borrowed_fd; }

  lock_internal::Target target;
  Backend backend = Backend::ofd;
  LockMode mode = LockMode::exclusive;
  HolderRecord record;
  sys::UniqueFd fd;      // kernel: the locked descriptor; dotlock: our lock file
  int borrowed_fd = -1;  // kernel lock taken through a LockFile: its descriptor
  struct stat st {};     // the inode we hold
  off_t file_size = 0;   // bytes in the lock file (record plus padding)
  std::unique_ptr<lock_internal::Heartbeat> heartbeat;
  bool held = false;
};

namespace lock_internal {
// What a LockFile keeps open between acquisitions, so a repeated lock costs only the lock itself.
struct OpenFiles {
  sys::UniqueFd lock_fd;  // kernel backends: the lock file
  struct stat st {};      // its inode
  std::optional<fence::FenceFile> fence;
};

// `files` may be null (open and close everything per acquisition).
std::unique_ptr<Lock::State> kernel_acquire(const Target& target, Backend backend, const LockOptions& options,
                                            const WaitSpec& wait, OpenFiles* files);
void kernel_release(Lock::State& state);
std::unique_ptr<Lock::State> dotlock_acquire(const Target& target, Backend backend, const LockOptions& options,
                                             const WaitSpec& wait, OpenFiles* files);
void dotlock_release(Lock::State& state);
}  // namespace lock_internal

}  // namespace holdfast

namespace holdfast::lock_internal {
// Judges the dotlock file at `path` the way a waiter would (held / stale), for inspection.
// Returns free if the file vanished meanwhile.
std::pair<HolderState, std::string> judge_dotlock(const std::string& path);
}  // namespace holdfast::lock_internal
