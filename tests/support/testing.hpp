// Helpers shared by every test suite: temp dirs, running the holdfast command, forking workers,
// a process-shared barrier so N processes can start racing at the same instant, reading files
// and polling for a state.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/identity.hpp"

namespace holdfast::testing {

// A fresh directory under $TMPDIR (or /tmp), removed recursively on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& under = "");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Sets the environment variable `name` to `value` for its lifetime (children forked or run
// meanwhile inherit it), then puts back what was there: the old value, or no variable. On every
// path out of a test, a failed ASSERT included.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, const std::string& value);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> previous_;
};

// A holdfast state directory of its own (HOLDFAST_STATE_DIR) for its lifetime: this test's
// fences, records and shm mappings, apart from every other test's. path() need not exist yet:
// holdfast creates it at the first lock.
class StateDir {
 public:
  StateDir() : StateDir(std::string()) {}
  // At `path` instead of inside a fresh temporary directory.
  explicit StateDir(const std::string& path) : path_(path.empty() ? dir_ / "state" : path), env_("HOLDFAST_STATE_DIR", path_) {}
  const std::string& path() const { return path_; }

 private:
  TempDir dir_;
  std::string path_;
  ScopedEnv env_;  // last: restored before the directory is removed
};

struct CommandResult {
  int exit_code = -1;    // exit status, or 128+signal if killed
  std::string out;
  std::string err;
};

// Runs argv (argv[0] resolved via PATH) with optional stdin; captures stdout and stderr.
CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data = "",
                  std::chrono::seconds timeout = std::chrono::seconds(120));
// Runs the holdfast command built alongside the tests, killing it after `timeout` (a hang).
CommandResult holdfast(const std::vector<std::string>& args, const std::string& stdin_data = "",
                       std::chrono::seconds timeout = std::chrono::seconds(120));
// Path of the holdfast command built alongside the tests.
std::string holdfast_path();
// The same command linked dynamically: holdfast-dynamic beside a static holdfast (README, "The
// static command"), else holdfast_path(). For tests that need the dynamic loader themselves, such
// as an LD_PRELOAD shim.
std::string dynamic_holdfast_path();

// In a forked child: replaces the process with `argv` (argv[0] is looked up in PATH unless it
// contains a '/'). Never returns: if the exec fails the child exits 127, as a shell does for a
// command it cannot run.
[[noreturn]] void exec_argv(const std::vector<std::string>& argv);

// Forks a child that runs `body` and _exit()s with its return value. Returns the pid.
pid_t fork_child(const std::function<int()>& body);
// Waits for `pid`; returns its exit status, or 128+signal.
int wait_child(pid_t pid);

// A barrier for processes: children block in wait() until the parent calls release(), which
// wakes all of them at once (they all read from one pipe that the parent closes).
class StartGun {
 public:
  StartGun();
  ~StartGun();
  void wait();     // in a child: block until fired
  void release();  // in the parent: fire
  void close_in_child();  // children that never wait call this after fork

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
};

// A tmpfs mounted over a fresh TempDir for one test, with `options` in mount -o syntax (e.g.
// "size=1m,nr_inodes=3"). ok() is false where the mount is refused (not root, no tmpfs), why()
// then says why and the test skips (HOLDFAST_SKIP_WITHOUT_TMPFS). Unmounted lazily (MNT_DETACH)
// on destruction, before the directory is removed.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& options);
  ~TmpfsMount();
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  const std::string& path() const { return dir_.path(); }
  std::string operator/(const std::string& name) const { return dir_ / name; }
  // Unmounts, then mounts a new tmpfs at the same place with `options` (a new mount id).
  void mount_again(const std::string& options);
  // Changes this very mount in place: MS_REMOUNT | `flags` (e.g. MS_RDONLY) with `options` (may
  // be empty). Returns false, with why(), if the kernel refuses.
  bool remount(const std::string& options, unsigned long flags = 0);

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string why_;
};

// The whole content of the file at `path`, byte for byte; empty if it cannot be opened (so a
// missing file shows as a mismatch in the test's expectation, not as an exception).
std::string read_file(const std::string& path);

// The names in directory `dir` but "." and "..", in readdir order; empty if `dir` cannot be
// opened (so "nothing there" and "no such directory" both read as empty).
std::vector<std::string> list_dir(const std::string& dir);

// Calls `done` until it returns true, sleeping 2 ms between calls, at most 30,000 times (so at
// least 60 s). Returns whether `done` became true. The limit only catches hangs: the caller
// synchronises on the real state that `done` reads, never on elapsed time.
template <class Pred>
bool eventually(Pred done) {
  for (int i = 0; i < 30000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

// How many blocked lock requests ("->" lines of /proc/locks) wait on the inode `path` names now;
// 0 if `path` does not exist. Lets a test wait until a waiter really blocks in the kernel.
int blocked_lock_waiters_on(const std::string& path);

// The identity of a process that existed and is now dead and reaped: a holder whose death can be
// proved (its pid may be reused later, by a process with another start time).
ProcessIdentity dead_identity();

// Anonymous shared memory visible to forked children; zero-initialised.
void* shared_memory(size_t bytes);
void free_shared_memory(void* p, size_t bytes);

}  // namespace holdfast::testing

// Skips the current GoogleTest test, saying why, where the TmpfsMount `m` could not be mounted.
#define HOLDFAST_SKIP_WITHOUT_TMPFS(m)                                  \
  do {                                                                  \
    if (!(m).ok()) GTEST_SKIP() << "cannot mount tmpfs: " << (m).why(); \
  } while (0)
