// Helpers shared by the lock tests (helpers for every suite live in tests/support).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <optional>
#include <string>

#include "holdfast/lock.hpp"
#include "lock/internal.hpp"
#include "support/testing.hpp"

namespace holdfast::lock_testing {

// Parameterised over a backend: the backend, a fresh directory and the lock path in it.
class BackendTest : public ::testing::TestWithParam<Backend> {
 protected:
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
};

// Where a kernel lock on the existing file `path` keeps its side state (holder record, fence) in
// the state directory; nullopt, with the reason in *why, where it has none.
inline std::optional<lock_internal::SideStatePaths> side_state_of(const std::string& path, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  ::fstat(fd, &st);
  auto paths = lock_internal::side_state_for(fd, st, why);
  ::close(fd);
  return paths;
}

// Expects, for the kernel-lock `backend`, that a waiter blocked on the old inode of a lock file
// that is then replaced (unlinked, and locked again at the same path) is not granted the old
// inode when its holder lets go: it notices and waits for the lock the path now names.
inline void expect_replaced_path_not_granted_through_old_inode(Backend backend) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  const LockOptions options{backend, LockMode::exclusive, {}, {}};
  auto first = Lock::acquire(path, options);
  int acquired[2];
  ASSERT_EQ(::pipe(acquired), 0);
  pid_t waiter = testing::fork_child([&] {
    auto l = Lock::acquire(path, options);
    char c = 'a';
    (void)!::write(acquired[1], &c, 1);
    return 0;
  });
  ::close(acquired[1]);
  // The waiter must be blocked in the kernel on the old inode before the path is replaced.
  ASSERT_TRUE(testing::eventually([&] { return testing::blocked_lock_waiters_on(path) > 0; }));
  ASSERT_EQ(::unlink(path.c_str()), 0);
  auto second = Lock::acquire(path, options);  // a new inode
  first.release();  // the waiter now gets the old inode, must notice, and wait on the new one
  pollfd pfd{acquired[0], POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 300), 0) << "waiter was granted a lock on a replaced file";
  second.release();
  char c;
  EXPECT_EQ(::read(acquired[0], &c, 1), 1);
  EXPECT_EQ(testing::wait_child(waiter), 0);
  ::close(acquired[0]);
}

// What processes contending for one lock saw inside it (make_detector, critical_section). Lives
// in shared memory; every field is touched only through atomics.
struct Detector {
  std::atomic<int> inside;
  std::atomic<int> overlaps;
  std::atomic<uint64_t> entries;
  std::atomic<uint64_t> last_token;
  std::atomic<int> token_regressions;
  std::atomic<int> readers_inside;
  std::atomic<int> max_readers;
};

inline Detector* make_detector() {
  auto* d = static_cast<Detector*>(testing::shared_memory(sizeof(Detector)));
  new (d) Detector{};
  return d;
}

// Inside the critical section: count entries, detect overlap and token order, and linger a
// little so an overlap has a real chance to show.
inline void critical_section(Detector* d, uint64_t token, int i) {
  if (d->inside.fetch_add(1) != 0) d->overlaps.fetch_add(1);
  uint64_t last = d->last_token.load();
  if (token <= last) d->token_regressions.fetch_add(1);
  d->last_token.store(token);
  d->entries.fetch_add(1);
  if (i % 7 == 0) sched_yield();
  d->inside.fetch_sub(1);
}

}  // namespace holdfast::lock_testing
