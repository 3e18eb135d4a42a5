// Mutual exclusion under real multi-process contention, for every backend.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "lock_test_helpers.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;

using lock_testing::critical_section;
using lock_testing::Detector;
using lock_testing::make_detector;

bool soak() { return std::getenv("HOLDFAST_SOAK") != nullptr; }

class ExclusionTest : public lock_testing::BackendTest {};

TEST_P(ExclusionTest, SixteenProcessesNeverOverlap) {
  Detector* d = make_detector();
  constexpr int kProcs = 16;
  const int per_proc = soak() ? 20000 : 2000;
  testing::StartGun gun;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    kids.push_back(testing::fork_child([&] {
      gun.wait();
      auto lf = LockFile::open(path, LockOptions{backend, LockMode::exclusive, {}, {}});
      for (int i = 0; i < per_proc; ++i) {
        Lock l = lf.acquire();
        critical_section(d, l.token(), i);
        l.release();
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(d->overlaps.load(), 0);
  EXPECT_EQ(d->token_regressions.load(), 0) << "fencing tokens must strictly increase across handoffs";
  EXPECT_EQ(d->entries.load(), static_cast<uint64_t>(kProcs * per_proc));
  testing::free_shared_memory(d, sizeof(Detector));
}

// Control: the same detector with no lock at all must see overlaps, or it proves nothing.
TEST(ExclusionDetector, CatchesUnlockedAccess) {
  Detector* d = make_detector();
  testing::StartGun gun;
  std::vector<pid_t> kids;
  for (int p = 0; p < 16; ++p) {
    kids.push_back(testing::fork_child([&] {
      gun.wait();
      for (int i = 0; i < 20000; ++i) critical_section(d, static_cast<uint64_t>(i) + 1, i);
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) testing::wait_child(k);
  EXPECT_GT(d->overlaps.load(), 0);
  testing::free_shared_memory(d, sizeof(Detector));
}

TEST_P(ExclusionTest, TwoHandlesInOneProcessExcludeEachOther) {
  // OFD and flock locks belong to the open file description, dotlocks to the file: unlike POSIX
  // record locks, a second handle in the same process must not be granted.
  LockOptions options{backend, LockMode::exclusive, {}, {}};
  auto first = Lock::try_acquire(path, options);
  ASSERT_TRUE(first);
  EXPECT_FALSE(Lock::try_acquire(path, options));
  first->release();
  EXPECT_TRUE(Lock::try_acquire(path, options));
}

TEST_P(ExclusionTest, SigkilledHolderIsReplacedPromptly) {
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t holder = testing::fork_child([&] {
    auto l = Lock::acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}});
    char c = 'r';
    if (::write(ready[1], &c, 1) != 1) return 1;
    ::pause();
    return 0;
  });
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  ::close(ready[1]);
  ASSERT_FALSE(Lock::try_acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}}));
  ::kill(holder, SIGKILL);
  testing::wait_child(holder);
  // Kernel backends: the kernel drops the lock with the process. Dotlocks: the record names a
  // pid that no longer exists, which is proof of death. Either way the waiter gets it.
  auto l = Lock::acquire_until(path, LockOptions{backend, LockMode::exclusive, {}, {}},
                               std::chrono::steady_clock::now() + 30s);
  ASSERT_TRUE(l);
  EXPECT_TRUE(l->held());
}

INSTANTIATE_TEST_SUITE_P(AllBackends, ExclusionTest,
                         ::testing::Values(Backend::ofd, Backend::flock, Backend::excl, Backend::link),
                         [](const auto& info) { return std::string(to_string(info.param)); });

class SharedTest : public lock_testing::BackendTest {};

TEST_P(SharedTest, ManyReadersTogetherNoWriter) {
  Detector* d = make_detector();
  constexpr int kReaders = 6;
  int release_pipe[2];
  ASSERT_EQ(::pipe(release_pipe), 0);
  std::vector<pid_t> kids;
  for (int r = 0; r < kReaders; ++r) {
    kids.push_back(testing::fork_child([&] {
      ::close(release_pipe[1]);
      auto l = Lock::acquire(path, LockOptions{backend, LockMode::shared, {}, {}});
      d->readers_inside.fetch_add(1);
      char c;
      while (::read(release_pipe[0], &c, 1) < 0) {
      }
      d->readers_inside.fetch_sub(1);
      return 0;
    }));
  }
  ::close(release_pipe[0]);
  // All readers get in at the same time: a shared lock admits many.
  for (int i = 0; i < 30000 && d->readers_inside.load() < kReaders; ++i) ::usleep(1000);
  EXPECT_EQ(d->readers_inside.load(), kReaders);
  // A writer is excluded while they hold it.
  EXPECT_FALSE(Lock::try_acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}}));
  // A further reader is admitted.
  EXPECT_TRUE(Lock::try_acquire(path, LockOptions{backend, LockMode::shared, {}, {}}));
  ::close(release_pipe[1]);
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  auto w = Lock::try_acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}});
  EXPECT_TRUE(w);
  // And while a writer holds it, readers are excluded.
  EXPECT_EQ(testing::wait_child(testing::fork_child([&] {
              return Lock::try_acquire(path, LockOptions{backend, LockMode::shared, {}, {}}) ? 1 : 0;
            })),
            0);
  testing::free_shared_memory(d, sizeof(Detector));
}

TEST_P(SharedTest, SharedTokenIsTheLastExclusiveOne) {
  uint64_t exclusive_token = 0;
  {
    auto w = Lock::acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}});
    exclusive_token = w.token();
  }
  auto r = Lock::acquire(path, LockOptions{backend, LockMode::shared, {}, {}});
  EXPECT_EQ(r.token(), exclusive_token);
}

INSTANTIATE_TEST_SUITE_P(KernelBackends, SharedTest, ::testing::Values(Backend::ofd, Backend::flock),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(DotlockShared, IsRefusedWithAUsageError) {
  testing::TempDir dir;
  try {
    Lock::acquire(dir / "lock", LockOptions{Backend::link, LockMode::shared, {}, {}});
    FAIL() << "shared dotlock was granted";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::usage);
  }
}

TEST(KernelLock, ReplacedPathIsNotGrantedThroughTheOldInode) {
  lock_testing::expect_replaced_path_not_granted_through_old_inode(Backend::ofd);
}

TEST(KernelLock, DeadlineEndsABlockedWaitAndSurvivesOtherSignals) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto held = Lock::acquire(path, LockOptions{Backend::ofd, LockMode::exclusive, {}, {}});
  int rc = testing::wait_child(testing::fork_child([&] {
    // SIGUSR1 arrives during the wait; without SA_RESTART it interrupts the fcntl, and the wait
    // must go on rather than fail early.
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    ::sigaction(SIGUSR1, &sa, nullptr);
    pid_t self = ::getpid();
    std::thread pester([self] {
      for (int i = 0; i < 5; ++i) {
        ::usleep(20000);
        ::kill(self, SIGUSR1);
      }
    });
    auto start = std::chrono::steady_clock::now();
    auto l = Lock::acquire_until(path, LockOptions{Backend::ofd, LockMode::exclusive, {}, {}}, start + 300ms);
    auto waited = std::chrono::steady_clock::now() - start;
    pester.join();
    if (l) return 1;                 // must not be granted
    if (waited < 290ms) return 2;    // must not end early on a stray signal
    return 0;
  }));
  EXPECT_EQ(rc, 0);
}

}  // namespace
}  // namespace holdfast
