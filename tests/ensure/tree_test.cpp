// The instance's process tree as stop sees it (src/ensure/tree.cpp).
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "ensure/internal.hpp"
#include "gtest/gtest.h"
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

}  // namespace
