// LockFile::Guard on the kernel and dotlock backends. On ofd and flock (exclusive) it takes the
// lock without a grant object (kernel_guard_acquire); everywhere else it holds a Lock. Either
// way it must keep a Lock's contract: exclusion against other processes and flock(1), a fencing
// token that rises across guards and Locks, the record naming the holder, nothing leaked when a
// grant fails half-way, and a forked child's copy that never releases its parent's lock. Also
// the rule Guards share with Locks: one grant at a time per LockFile. (The shm fast path has its
// own tests in shm_test.cpp.)
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/lock.hpp"
#include "lock_test_helpers.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::StateDir;
using testing::TempDir;

class GuardTest : public ::testing::TestWithParam<Backend> {
 protected:
  StateDir state;
  TempDir dir;
  const std::string path = dir / "lock";
  LockOptions options{GetParam()};
};

bool is_kernel(Backend b) { return b == Backend::ofd || b == Backend::flock; }

// Whether another process can take `path` right now: through holdfast on the same backend, and
// for kernel backends also with the bare system call on a fresh open file description, as
// flock(1) (flock) or any OFD user (ofd) would. 1 when it could, 0 when it could not.
int another_process_can_take(const std::string& path, Backend backend) {
  pid_t child = testing::fork_child([&] {
    if (is_kernel(backend)) {
      int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) return 2;
      if (backend == Backend::flock) return ::flock(fd, LOCK_EX | LOCK_NB) == 0 ? 1 : 0;
      struct flock request {};
      request.l_type = F_WRLCK;
      request.l_whence = SEEK_SET;
      return ::fcntl(fd, F_OFD_SETLK, &request) == 0 ? 1 : 0;
    }
    return Lock::try_acquire(path, LockOptions{backend}) ? 1 : 0;
  });
  return testing::wait_child(child);
}

TEST_P(GuardTest, ExcludesOtherProcessesAndReleasesAtScopeEnd) {
  auto lf = LockFile::open(path, options);
  for (int round = 0; round < 3; ++round) {
    {
      LockFile::Guard g(lf);
      EXPECT_EQ(another_process_can_take(path, GetParam()), 0) << "round " << round;
    }
    EXPECT_EQ(another_process_can_take(path, GetParam()), 1) << "round " << round << ": the guard did not release";
  }
}

// Eight processes, each through its own LockFile, in guards: never two inside at once, and every
// token above the one before it.
TEST_P(GuardTest, EightProcessesNeverOverlapAndTokensRise) {
  lock_testing::Detector* d = lock_testing::make_detector();
  const int rounds = is_kernel(GetParam()) ? 400 : 60;
  std::vector<pid_t> kids;
  for (int k = 0; k < 8; ++k) {
    kids.push_back(testing::fork_child([&] {
      auto lf = LockFile::open(path, options);
      for (int i = 0; i < rounds; ++i) {
        LockFile::Guard g(lf);
        lock_testing::critical_section(d, g.token(), i);
      }
      return 0;
    }));
  }
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(d->overlaps.load(), 0);
  EXPECT_EQ(d->token_regressions.load(), 0) << "fencing tokens must strictly increase";
  EXPECT_EQ(d->entries.load(), 8U * rounds);
  testing::free_shared_memory(d, sizeof(lock_testing::Detector));
}

// The record a guard writes names this process with the guard's token and a nonce of its own;
// tokens rise across guards, Locks of the same LockFile (also one released but still alive, whose
// record is still lent) and Locks of the path.
TEST_P(GuardTest, RecordNamesTheHolderAndTokensRiseAcrossGuardsAndLocks) {
  auto lf = LockFile::open(path, options);
  uint64_t last = 0;
  std::set<uint64_t> nonces;
  auto rises = [&](uint64_t token, const char* what) {
    EXPECT_GT(token, last) << what;
    last = token;
  };
  for (int i = 0; i < 3; ++i) {
    {
      LockFile::Guard g(lf);
      rises(g.token(), "guard");
      auto record = read_holder_record(path);
      ASSERT_TRUE(record);
      EXPECT_EQ(record->token, g.token());
      ASSERT_EQ(record->processes.size(), 1U);
      EXPECT_EQ(record->processes.front(), self_identity());
      EXPECT_TRUE(nonces.insert(record->nonce).second) << "a nonce repeated";
    }
    rises(lf.acquire().token(), "Lock through the guard's LockFile");
    {
      auto released = lf.acquire();
      rises(released.token(), "Lock kept alive after its release");
      released.release();
      LockFile::Guard g(lf);  // the LockFile's record is still lent to `released`
      rises(g.token(), "guard beside a released Lock");
      EXPECT_EQ(another_process_can_take(path, GetParam()), 0);
    }
    rises(Lock::acquire(path, options).token(), "Lock::acquire");
  }
}

// One grant at a time per LockFile, as for Locks: a guard beside a live Lock of its LockFile
// throws, and a Lock beside a guard is refused.
TEST_P(GuardTest, OneGrantAtATimePerLockFile) {
  auto lf = LockFile::open(path, options);
  {
    auto l = lf.acquire();
    EXPECT_THROW(LockFile::Guard g(lf), Error);
    EXPECT_EQ(another_process_can_take(path, GetParam()), 0) << "the failed guard released the Lock";
  }
  {
    LockFile::Guard g(lf);
    EXPECT_FALSE(lf.try_acquire());
    EXPECT_THROW(lf.acquire(), Error);
  }
  EXPECT_TRUE(lf.try_acquire());
}

// A Lock released but kept alive, destroyed only after the LockFile granted again, must not end
// the later grant's claim: otherwise the LockFile grants a third time beside the second, which
// on a kernel lock is the same open file description, granted at once.
TEST_P(GuardTest, AReleasedLockDestroyedLaterLeavesTheNextGrantsClaim) {
  auto lf = LockFile::open(path, options);
  std::optional<Lock> first = lf.acquire();
  first->release();
  Lock second = lf.acquire();
  first.reset();
  ASSERT_FALSE(lf.try_acquire()) << "granted twice at once through one LockFile";
  EXPECT_EQ(another_process_can_take(path, GetParam()), 0);
  second.release();
  EXPECT_TRUE(lf.try_acquire());
}

// A forked child that destroys its copy of the parent's guard must not unlock the parent's lock.
// For kernel locks the child shares the parent's open file description: an unlock there is the
// parent's unlock.
TEST_P(GuardTest, AForkedChildsCopyNeverReleasesTheParentsLock) {
  auto lf = LockFile::open(path, options);
  LockFile::Guard g(lf);
  pid_t child = testing::fork_child([&] {
    g.~Guard();
    return 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
  EXPECT_EQ(another_process_can_take(path, GetParam()), 0) << "the child's copy released the parent's lock";
}

INSTANTIATE_TEST_SUITE_P(Backends, GuardTest, ::testing::Values(Backend::ofd, Backend::flock, Backend::excl, Backend::link),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// A kernel guard whose token cannot be issued (the fencing file is corrupt: fail closed) throws
// and holds nothing: the kernel lock taken before the fence was read is released, and the
// LockFile is free for its next grant.
TEST(KernelGuard, AGrantThatFailsAfterLockingReleasesTheLock) {
  for (Backend backend : {Backend::ofd, Backend::flock}) {
    StateDir state;
    TempDir dir;
    const std::string path = dir / "lock";
    auto lf = LockFile::open(path, LockOptions{backend});
    { LockFile::Guard g(lf); }  // the fence file exists, and the LockFile's files are open
    std::string fence;
    for (const auto& e : std::filesystem::directory_iterator(state.path())) {
      if (e.path().extension() == ".fence") fence = e.path();
    }
    ASSERT_FALSE(fence.empty());
    int fd = ::open(fence.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "garbage", 7, 0), 7);  // the epoch line no longer parses
    ::close(fd);
    EXPECT_THROW(LockFile::Guard g(lf), Error) << to_string(backend);
    EXPECT_EQ(another_process_can_take(path, backend), 1) << to_string(backend) << ": the failed guard kept the lock";
    EXPECT_THROW(LockFile::Guard g(lf), Error) << to_string(backend) << ": not the same error the second time";
  }
}

}  // namespace
}  // namespace holdfast
