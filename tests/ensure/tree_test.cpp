// The instance's process tree as stop sees it (src/ensure/tree.cpp).
#include <fcntl.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>

#include "ensure/internal.hpp"
#include "gtest/gtest.h"
#include "sys/fd.hpp"
#include "sys/file.hpp"
#include "support/testing.hpp"

namespace {

using holdfast::ensure_detail::is_descendant;

// A daemon's worker stays a descendant of the supervisor (a subreaper) while the daemon exits:
// the kernel reparents the worker to the subreaper before the daemon becomes a zombie. stop's
// TERM used to skip the worker when the daemon died of the same TERM between the check's reads
// of the worker and of the daemon (seen under TSan: the worker outlived `holdfast stop`).
// The checker runs in a tight loop across each daemon's exit, many rounds, so the window is hit.
TEST(EnsureTree, AWorkerStaysADescendantWhileItsParentExits) {
  pid_t root = holdfast::testing::fork_child([] {
    if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return 2;
    const pid_t self = ::getpid();
    for (int round = 0; round < 300; ++round) {
      int ids[2];
      int go[2];
      if (::pipe(ids) != 0 || ::pipe(go) != 0) return 3;
      pid_t daemon = ::fork();
      if (daemon < 0) return 3;
      if (daemon == 0) {
        ::close(go[1]);  // so that the parent's close is this read's EOF
        pid_t worker = ::fork();
        if (worker == 0) {
          ::close(go[0]);
          for (;;) ::pause();
        }
        if (::write(ids[1], &worker, sizeof worker) != static_cast<ssize_t>(sizeof worker)) ::_exit(4);
        char b;
        (void)::read(go[0], &b, 1);
        ::_exit(0);
      }
      pid_t worker = 0;
      if (::read(ids[0], &worker, sizeof worker) != static_cast<ssize_t>(sizeof worker)) return 3;
      ::close(go[0]);
      ::close(go[1]);  // the daemon exits now; check the worker all the while
      bool missed = false;
      for (int i = 0; i < 2000; ++i) {
        if (!is_descendant(worker, self)) missed = true;
      }
      ::kill(worker, SIGKILL);
      while (::waitpid(-1, nullptr, 0) > 0) {
      }
      ::close(ids[0]);
      ::close(ids[1]);
      if (missed) return 1;
    }
    return 0;
  });
  EXPECT_EQ(holdfast::testing::wait_child(root), 0) << "a live worker was judged outside the tree while its parent exited";
}

// A multi-threaded daemon whose main thread exits first: /proc shows the group's leader as a
// zombie while another thread runs on, and the worker, reparented to that thread, still names
// the group's pid as its parent. The check used to answer "not a descendant" for the whole time
// the group lived on (found when the test above failed under TSan, whose runtime gives every
// forked child a second thread). Deterministic: the leader leaves with a thread-only exit.
TEST(EnsureTree, AWorkerOfAZombieLeaderWithLiveThreadsStaysADescendant) {
  pid_t root = holdfast::testing::fork_child([] {
    if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return 2;
    int ids[2];
    int go[2];
    if (::pipe(ids) != 0 || ::pipe(go) != 0) return 3;
    pid_t daemon = ::fork();
    if (daemon < 0) return 3;
    if (daemon == 0) {
      ::close(go[1]);
      pid_t worker = ::fork();
      if (worker == 0) {
        for (;;) ::pause();
      }
      // The thread that outlives the leader: it ends the group when the test says so.
      pthread_t keeper;
      static int go_read;
      go_read = go[0];
      if (::pthread_create(
              &keeper, nullptr,
              [](void*) -> void* {
                char b;
                (void)::read(go_read, &b, 1);
                ::_exit(0);
              },
              nullptr) != 0)
        ::_exit(4);
      if (::write(ids[1], &worker, sizeof worker) != static_cast<ssize_t>(sizeof worker)) ::_exit(4);
      ::syscall(SYS_exit, 0);  // this thread only: the leader becomes a zombie, the group lives
    }
    ::close(go[0]);
    pid_t worker = 0;
    if (::read(ids[0], &worker, sizeof worker) != static_cast<ssize_t>(sizeof worker)) return 3;
    // Wait until /proc shows the leader as a zombie.
    bool leader_zombie = false;
    for (int i = 0; i < 5000 && !leader_zombie; ++i) {
      auto stat = holdfast::testing::read_file("/proc/" + std::to_string(daemon) + "/stat");
      auto close = stat.rfind(')');
      leader_zombie = close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
      if (!leader_zombie) ::usleep(1000);
    }
    if (!leader_zombie) return 5;
    const bool seen = is_descendant(worker, ::getpid());
    ::close(go[1]);
    ::kill(worker, SIGKILL);
    while (::waitpid(-1, nullptr, 0) > 0) {
    }
    return seen ? 0 : 1;
  });
  EXPECT_EQ(holdfast::testing::wait_child(root), 0)
      << "1: a live worker was judged outside the tree while its parent's group lived on; 5: the leader never showed as a zombie";
}


// read_proc_file stops at the first short read (a seq_file's end). A /proc file longer than its
// 4 KiB reads must still come back whole: the fdinfo of a descriptor holding 150 OFD locks on
// disjoint ranges is one "lock:" line per lock (~10 KiB), stable while nothing changes them.
TEST(EnsureProcFile, ReadsASeqFileLongerThanOneReadWhole) {
  holdfast::testing::TempDir dir;
  const std::string path = dir.path() + "/locked";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  holdfast::sys::UniqueFd owned(fd);
  for (int i = 0; i < 150; ++i) {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 2 * i;  // gaps between ranges keep them from merging
    fl.l_len = 1;
    ASSERT_EQ(::fcntl(fd, F_OFD_SETLK, &fl), 0) << std::strerror(errno);
  }
  const std::string fdinfo = "/proc/self/fdinfo/" + std::to_string(fd);
  auto whole = holdfast::sys::read_file(fdinfo);
  auto once = holdfast::sys::read_proc_file(fdinfo);
  ASSERT_TRUE(whole && once);
  EXPECT_GT(once->size(), 8192U);
  EXPECT_EQ(*once, *whole);
  // And a short one, /proc/self/stat, parses to this process's pid with nothing left out.
  auto stat = holdfast::sys::read_proc_file("/proc/self/stat");
  ASSERT_TRUE(stat);
  EXPECT_EQ(stat->rfind(std::to_string(::getpid()) + " (", 0), 0U);
  EXPECT_EQ(stat->back(), '\n');
  errno = 0;
  EXPECT_FALSE(holdfast::sys::read_proc_file("/proc/self/fdinfo/999999"));
  EXPECT_EQ(errno, ENOENT);
}

}  // namespace
