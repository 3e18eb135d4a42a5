// holdfast::Lock on filesystems that lie: the backends must not silently double-grant where the
// probe says their primitive is unsafe, and must stay exclusive where it is safe.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "holdfast/probe.hpp"
#include "support/faultfs.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::FaultFs;


struct Counters {
  std::atomic<int> inside;
  std::atomic<int> overlaps;
  std::atomic<int> grants;
  std::atomic<int> refused;   // Error with exit_code::unavailable
  std::atomic<int> failures;  // any other exception
  std::atomic<int> kernel_backend;  // grants that used ofd/flock
  std::atomic<int> timeouts;        // acquire_until gave up (a wedged lock)
  char first_failure[256];
};

struct Tally {
  int overlaps, grants, refused, failures, kernel_backend, timeouts;
  std::string first_failure;
};

// `procs` processes each take and release the lock `per_proc` times; returns the counts.
// Each acquire waits at most 5 s; a process whose wait times out stops (counted in `timeouts`).
Tally contend(const std::string& path, Backend backend, int procs, int per_proc) {
  auto* c = static_cast<Counters*>(testing::shared_memory(sizeof(Counters)));
  testing::StartGun gun;
  std::vector<pid_t> pids;
  for (int p = 0; p < procs; ++p) {
    pids.push_back(testing::fork_child([&] {
      gun.wait();
      LockOptions o;
      o.backend = backend;
      for (int i = 0; i < per_proc; ++i) {
        try {
          auto got = Lock::acquire_until(path, o, std::chrono::steady_clock::now() + std::chrono::seconds(5));
          if (!got) {
            c->timeouts.fetch_add(1);
            return 0;
          }
          Lock lock = std::move(*got);
          if (c->inside.fetch_add(1) != 0) c->overlaps.fetch_add(1);
          c->grants.fetch_add(1);
          if (lock.backend() == Backend::ofd || lock.backend() == Backend::flock) c->kernel_backend.fetch_add(1);
          ::usleep(200);
          c->inside.fetch_sub(1);
          lock.release();
        } catch (const Error& e) {
          if ((e.exit_code() == exit_code::unavailable ? c->refused : c->failures).fetch_add(1) == 0 &&
              e.exit_code() != exit_code::unavailable) {
            std::snprintf(c->first_failure, sizeof c->first_failure, "%s", e.what());
          }
          if (e.exit_code() == exit_code::unavailable) return 0;
        } catch (...) {
          c->failures.fetch_add(1);
        }
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t pid : pids) testing::wait_child(pid);
  Tally out{c->overlaps.load(), c->grants.load(), c->refused.load(), c->failures.load(),
            c->kernel_backend.load(), c->timeouts.load(), c->first_failure};
  testing::free_shared_memory(c, sizeof(Counters));
  return out;
}

TEST(LockOnFaultFs, AutomaticNeverDoubleGrantsWithNolocks) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks");
  auto c = contend(fs / "auto.lock", Backend::automatic, 4, 50);
  EXPECT_EQ(c.overlaps, 0) << "automatic double-granted on a filesystem that ignores locks";
  EXPECT_EQ(c.kernel_backend, 0) << "automatic picked an unenforced kernel lock";
  EXPECT_EQ(c.failures, 0);
  // Either it falls back to a safe dotlock (all grants) or refuses with exit_code::unavailable.
  EXPECT_TRUE(c.grants == 200 || c.refused > 0)
      << "grants " << c.grants << " refused " << c.refused;
}

TEST(LockOnFaultFs, LinkDotlockStaysExclusiveWithNonatomicCreate) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nonatomic_create");
  const char* soak = std::getenv("HOLDFAST_SOAK");
  int per = soak != nullptr && std::string(soak) == "1" ? 2500 : 250;
  auto c = contend(fs / "link.lock", Backend::link, 4, per);
  EXPECT_EQ(c.overlaps, 0) << "link dotlock double-granted";
  // Under load faultfs's stale view can surface as a clear error (ESTALE, as on NFS): failing
  // closed is acceptable, double-granting is not. Every attempt must end one way or the other.
  EXPECT_EQ(c.grants + c.failures, 4 * per);
  EXPECT_LE(c.failures, 4 * per / 100) << c.first_failure;
  if (c.failures > 0) std::printf("link dotlock: %d clear failures, first: %s\n", c.failures, c.first_failure.c_str());
  EXPECT_EQ(c.timeouts, 0);
}

// O_EXCL and RENAME_NOREPLACE are exactly what nonatomic_create breaks, so the excl dotlock cannot
// be exclusive there: nothing built on a non-atomic create can. What holdfast owes is to say so:
// probe must flag both primitives UNSAFE on that filesystem (docs/PROBE.md).
TEST(LockOnFaultFs, ExclDotlockOnNonatomicCreateIsFlaggedByProbe) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nonatomic_create");
  auto c = contend(fs / "excl.lock", Backend::excl, 4, 100);
  RecordProperty("excl_overlaps", c.overlaps);
  RecordProperty("excl_timeouts", c.timeouts);
  std::printf("excl dotlock on nonatomic_create: %d overlaps in %d grants, %d wedged waits\n",
              c.overlaps, c.grants, c.timeouts);
  ProbeOptions o;
  o.directory = fs.mount_path();
  o.workers = 8;
  o.rounds = 20;
  o.primitives = {Primitive::excl, Primitive::rename};
  auto r = probe(o);
  EXPECT_EQ(r.find(Primitive::excl)->verdict, Verdict::unsafe);
  EXPECT_EQ(r.find(Primitive::rename)->verdict, Verdict::unsafe);
}

}  // namespace
}  // namespace holdfast
