// The shm backend: exclusion across processes (with a detector and its control), shared and
// exclusive modes, SIGKILL of holders at random and at injected points (the lock is never lost
// for good and never granted twice; tokens never repeat), fair (FIFO) order, the mapping's
// validation (corrupt, truncated, previous boot, another pid namespace), threads, fork, and the
// command and the library on the same file.
#include <fcntl.h>
#include <glob.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/lock.hpp"
#include <nlohmann/json.hpp>
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

bool soak() {
  const char* s = std::getenv("HOLDFAST_SOAK");
  return s != nullptr && *s != '\0' && *s != '0';
}

bool sanitized() {
#ifdef HOLDFAST_SANITIZED
  return true;
#else
  return false;
#endif
}

// The state directory (where the mapping lives) of one test.
using testing::StateDir;

// The one shm mapping in `state`; empty if there is none or more than one.
std::string mapping_in(const StateDir& state) {
  glob_t g{};
  const std::string pattern = state.path() + "/*.shm";
  std::string found;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc == 1) found = g.gl_pathv[0];
  ::globfree(&g);
  return found;
}

LockOptions shm(LockMode mode = LockMode::exclusive, bool fair = false) {
  LockOptions o;
  o.backend = Backend::shm;
  o.mode = mode;
  o.fair = fair;
  return o;
}

// Shared memory object of type T for forked children; zeroed, freed on destruction.
template <typename T>
class Shared {
 public:
  Shared() : p_(static_cast<T*>(testing::shared_memory(sizeof(T)))) { new (p_) T{}; }
  ~Shared() { testing::free_shared_memory(p_, sizeof(T)); }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }

 private:
  T* p_;
};

// ---- exclusion, with an overlap detector that also survives SIGKILLed holders ----

constexpr int kMaxReaped = 1 << 15;

// Who is inside the critical section. A holder enters by exchanging its pid in and leaves by
// compare-exchanging it out: a second holder inside at the same time makes one of the two fail.
// A holder SIGKILLed inside leaves its pid behind; the next holder accepts that only once the
// parent has reaped that pid (so it is dead, not merely doomed).
struct Detector {
  std::atomic<int32_t> occupant;
  std::atomic<int> overlaps;
  std::atomic<uint64_t> entries;
  std::atomic<uint64_t> last_token;
  std::atomic<int> token_regressions;
  std::atomic<int> stop;
  std::atomic<int> reaped_count;
  std::atomic<int32_t> reaped[kMaxReaped];
};

bool was_reaped(const Detector& d, int32_t pid) {
  const int n = std::min(d.reaped_count.load(), kMaxReaped);
  for (int i = 0; i < n; ++i) {
    if (d.reaped[i].load() == pid) return true;
  }
  return false;
}

void enter(Detector& d, uint64_t token, int i, bool expect_reaps) {
  const auto me = static_cast<int32_t>(::getpid());
  const int32_t prev = d.occupant.exchange(me);
  if (prev != 0 && !expect_reaps) {
    d.overlaps.fetch_add(1);
  } else if (prev != 0) {
    // Only a dead holder may have left it: wait (a bounded time, to catch hangs) until reaped.
    const auto give_up = Clock::now() + 60s;
    while (!was_reaped(d, prev) && Clock::now() < give_up) ::sched_yield();
    if (!was_reaped(d, prev)) d.overlaps.fetch_add(1);
  }
  if (token != 0) {
    if (token <= d.last_token.load()) d.token_regressions.fetch_add(1);
    d.last_token.store(token);
  }
  d.entries.fetch_add(1);
  if (i % 5 == 0) ::sched_yield();  // linger: give an overlap a chance to show
  int32_t expected = me;
  if (!d.occupant.compare_exchange_strong(expected, 0)) d.overlaps.fetch_add(1);
}

// How a worker takes the lock: not at all (the detector's control), Lock, LockFile::Guard, the
// two alternately through one LockFile, or a guard alternating with a timed acquire (glibc's
// pthread_mutex_timedlock, where acquire() and the guard use the inline uncontended path: both
// implementations of one robust mutex, on one word and one robust list).
enum class Via { nothing, lock, guard, alternate, alternate_timed };

int worker(Detector& d, const std::string& path, const LockOptions& options, Via via, bool kills) {
  auto lf = LockFile::open(path, options);
  for (int i = 0; d.stop.load() == 0; ++i) {
    if (via == Via::lock || (via == Via::alternate && i % 2 == 0)) {
      Lock l = lf.acquire();
      enter(d, l.token(), i, kills);
    } else if (via == Via::alternate_timed && i % 2 == 0) {
      auto l = lf.acquire_until(Clock::now() + 3600s);
      if (!l) return 3;
      enter(d, l->token(), i, kills);
    } else if (via != Via::nothing) {
      LockFile::Guard g(lf);
      enter(d, g.token(), i, kills);
    } else {
      enter(d, 0, i, kills);
    }
  }
  return 0;
}

// Runs `procs` workers; kills one at random `kills` times (replacing it); then stops them all.
void run_workers(Detector& d, const std::string& path, const LockOptions& options, Via via, int procs,
                 int kills) {
  std::mt19937 rng(12345);
  std::vector<pid_t> kids;
  auto spawn = [&] { return testing::fork_child([&] { return worker(d, path, options, via, kills > 0); }); };
  for (int p = 0; p < procs; ++p) kids.push_back(spawn());
  for (int k = 0; k < kills; ++k) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 400));
    const size_t victim = rng() % kids.size();
    ::kill(kids[victim], SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(kids[victim], &status, 0), kids[victim]);
    ASSERT_TRUE(WIFSIGNALED(status)) << "a worker ended on its own: " << status;
    const int slot = d.reaped_count.load();
    ASSERT_LT(slot, kMaxReaped);
    d.reaped[slot].store(kids[victim]);
    d.reaped_count.store(slot + 1);
    kids[victim] = spawn();
  }
  if (kills == 0) std::this_thread::sleep_for(200ms);  // let the unkilled ones run a while
  d.stop.store(1);
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
}

TEST(ShmLock, EightProcessesNeverOverlap) {
  StateDir state;
  testing::TempDir dir;
  for (bool fair : {false, true}) {
    Shared<Detector> d;
    run_workers(*d, dir / "lock", shm(LockMode::exclusive, fair), Via::lock, 8, 0);
    EXPECT_EQ(d->overlaps.load(), 0) << "fair=" << fair;
    EXPECT_EQ(d->token_regressions.load(), 0) << "fencing tokens must strictly increase";
    EXPECT_GT(d->entries.load(), 8U);
  }
}

// Control: the same detector and workers with no lock must see overlaps, or it proves nothing.
TEST(ShmLock, DetectorCatchesUnlockedAccess) {
  testing::TempDir dir;
  Shared<Detector> d;
  // Nothing reaped: any leftover pid counts as an overlap at once (no wait).
  run_workers(*d, dir / "lock", shm(), Via::nothing, 8, 0);
  EXPECT_GT(d->overlaps.load(), 0);
}

// SIGKILL of holders at random points (anywhere in acquire, the critical section, or release):
// never two holders at once, tokens always rising, and the lock is never lost for good. Through
// Lock and through LockFile::Guard; plain and fair.
class ShmKill : public ::testing::TestWithParam<std::tuple<bool, Via>> {};

TEST_P(ShmKill, RandomSigkillsNeverDoubleGrantNorLoseTheLock) {
  StateDir state;
  testing::TempDir dir;
  const auto [fair, via] = GetParam();
  const int kills = soak() ? 10000 : sanitized() ? 30 : 300;
  Shared<Detector> d;
  run_workers(*d, dir / "lock", shm(LockMode::exclusive, fair), via, 3, kills);
  EXPECT_EQ(d->overlaps.load(), 0);
  EXPECT_EQ(d->token_regressions.load(), 0);
  auto l = Lock::acquire_until(dir / "lock", shm(LockMode::exclusive, fair), Clock::now() + 60s);
  ASSERT_TRUE(l) << "the lock was lost for good";
  EXPECT_GT(l->token(), d->last_token.load());
}

INSTANTIATE_TEST_SUITE_P(Shm, ShmKill,
                         ::testing::Combine(::testing::Values(false, true),
                                            ::testing::Values(Via::lock, Via::guard, Via::alternate_timed)),
                         [](const auto& info) {
                           const Via via = std::get<1>(info.param);
                           return std::string(std::get<0>(info.param) ? "fair" : "plain") +
                                  (via == Via::guard ? "_guard" : via == Via::alternate_timed ? "_guard_and_timed" : "");
                         });

// ---- shared and exclusive ----

TEST(ShmLock, SharedHoldersCoexistAndExcludeWriters) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto w = Lock::acquire(path, shm());
  const uint64_t writer_token = w.token();
  EXPECT_FALSE(Lock::try_acquire(path, shm(LockMode::shared)));
  w.release();

  struct Counter {
    std::atomic<int> holding;
    std::atomic<int> go;
  };
  Shared<Counter> c;
  std::vector<pid_t> readers;
  for (int i = 0; i < 4; ++i) {
    readers.push_back(testing::fork_child([&] {
      auto r = Lock::acquire(path, shm(LockMode::shared));
      if (r.token() != writer_token) return 3;  // a shared holder's token is the last exclusive one
      c->holding.fetch_add(1);
      while (c->go.load() == 0) ::sched_yield();
      return 0;
    }));
  }
  // All four hold it at the same time (each waits for `go` while holding).
  const auto give_up = Clock::now() + 60s;
  while (c->holding.load() < 4 && Clock::now() < give_up) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(c->holding.load(), 4);
  EXPECT_FALSE(Lock::try_acquire(path, shm())) << "a writer got in beside readers";
  EXPECT_TRUE(Lock::try_acquire(path, shm(LockMode::shared)));
  c->go.store(1);
  for (pid_t r : readers) EXPECT_EQ(testing::wait_child(r), 0);
  auto again = Lock::try_acquire(path, shm());
  ASSERT_TRUE(again);
  EXPECT_GT(again->token(), writer_token);
}

TEST(ShmLock, ReadersAndWritersNeverOverlap) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  struct RW {
    std::atomic<int> readers;
    std::atomic<int> writers;
    std::atomic<int> overlaps;
    std::atomic<int> max_readers;
  };
  Shared<RW> s;
  const int rounds = sanitized() ? 200 : 2000;
  std::vector<pid_t> kids;
  for (int p = 0; p < 6; ++p) {
    const bool writer = p % 2 == 0;
    kids.push_back(testing::fork_child([&, writer] {
      auto lf = LockFile::open(path, shm(writer ? LockMode::exclusive : LockMode::shared));
      for (int i = 0; i < rounds; ++i) {
        Lock l = lf.acquire();
        if (writer) {
          if (s->writers.fetch_add(1) != 0 || s->readers.load() != 0) s->overlaps.fetch_add(1);
          if (i % 3 == 0) ::sched_yield();
          s->writers.fetch_sub(1);
        } else {
          const int n = s->readers.fetch_add(1) + 1;
          if (s->writers.load() != 0) s->overlaps.fetch_add(1);
          int m = s->max_readers.load();
          while (n > m && !s->max_readers.compare_exchange_weak(m, n)) {
          }
          if (i % 3 == 0) ::sched_yield();
          s->readers.fetch_sub(1);
        }
      }
      return 0;
    }));
  }
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(s->overlaps.load(), 0);
}

// ---- SIGKILL at injected points inside acquire and release ----

struct Point {
  const char* name;
  LockMode mode;
  bool fair;
  bool release_first;  // the point is in release()
  bool guard = false;  // taken through LockFile::Guard (twice: the point's `pass`-th pass stops)
  int pass = 1;        // which pass of the point stops (2: a repeated grant's path)
};

class ShmInjected : public ::testing::TestWithParam<Point> {};

TEST_P(ShmInjected, KilledThereTheLockComesBackWithAHigherToken) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  const Point pt = GetParam();
  uint64_t before = 0;
  {
    auto l = Lock::acquire(path, shm());
    before = l.token();
  }
  pid_t child = testing::fork_child([&] {
    ::setenv("HOLDFAST_TEST_SHM_STOP_AT", (pt.name + std::string(":") + std::to_string(pt.pass)).c_str(), 1);
    auto lf = LockFile::open(path, shm(pt.mode, pt.fair));
    if (pt.guard) {
      for (int i = 0; i < 2; ++i) LockFile::Guard g(lf);
      return 7;
    }
    Lock l = lf.acquire();
    if (pt.release_first) l.release();
    return 7;  // the hook did not stop us
  });
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, WUNTRACED), child);
  ASSERT_TRUE(WIFSTOPPED(status)) << pt.name << ": the hook was not reached (status " << status << ")";
  // Stopped there, it still holds what it took: a writer cannot get in. (A reader stopped in
  // release has already given its slot up: writers no longer wait for it.)
  if (!(pt.release_first && pt.mode == LockMode::shared)) EXPECT_FALSE(Lock::try_acquire(path, shm())) << pt.name;
  ::kill(child, SIGKILL);
  EXPECT_EQ(testing::wait_child(child), 128 + SIGKILL);
  auto l = Lock::acquire_until(path, shm(LockMode::exclusive, pt.fair), Clock::now() + 60s);
  ASSERT_TRUE(l) << pt.name << ": the lock was lost for good";
  EXPECT_GT(l->token(), before) << pt.name;
  // The record names this grant, even after a holder died mid-write.
  auto rec = read_holder_record(path);
  ASSERT_TRUE(rec) << pt.name;
  EXPECT_EQ(rec->token, l->token());
  EXPECT_EQ(rec->backend, Backend::shm);
  ASSERT_FALSE(rec->processes.empty());
  EXPECT_EQ(rec->processes.front().pid, ::getpid());
  const uint64_t granted = l->token();
  l->release();
  auto next = Lock::acquire(path, shm());
  EXPECT_GT(next.token(), granted);
}

INSTANTIATE_TEST_SUITE_P(
    Shm, ShmInjected,
    ::testing::Values(Point{"shm-gate-locked", LockMode::exclusive, false, false},
                      Point{"shm-token-issued", LockMode::exclusive, false, false},
                      Point{"shm-record-torn", LockMode::exclusive, false, false},
                      Point{"shm-granted", LockMode::exclusive, false, false},
                      Point{"shm-release", LockMode::exclusive, false, true},
                      Point{"shm-gate-locked", LockMode::exclusive, true, false},
                      Point{"shm-token-issued", LockMode::exclusive, true, false},
                      Point{"shm-release", LockMode::exclusive, true, true},
                      Point{"shm-gate-locked", LockMode::shared, false, false},
                      Point{"shm-reader-slot", LockMode::shared, false, false},
                      Point{"shm-granted", LockMode::shared, false, false},
                      Point{"shm-release", LockMode::shared, false, true},
                      Point{"shm-reader-slot", LockMode::shared, true, false},
                      // LockFile::Guard: its first grant writes the whole record, the second only
                      // the grant's own fields (pass 2).
                      Point{"shm-gate-locked", LockMode::exclusive, false, false, true, 2},
                      Point{"shm-token-issued", LockMode::exclusive, false, false, true, 2},
                      Point{"shm-record-torn", LockMode::exclusive, false, false, true, 1},
                      Point{"shm-record-torn", LockMode::exclusive, false, false, true, 2},
                      Point{"shm-granted", LockMode::exclusive, false, false, true, 2},
                      Point{"shm-release", LockMode::exclusive, false, true, true, 2},
                      Point{"shm-gate-locked", LockMode::exclusive, true, false, true, 2},
                      Point{"shm-token-issued", LockMode::exclusive, true, false, true, 2},
                      Point{"shm-release", LockMode::exclusive, true, true, true, 2}),
    [](const auto& info) {
      std::string n = std::string(info.param.name).substr(4) + (info.param.mode == LockMode::shared ? "_shared" : "_excl") +
                      (info.param.fair ? "_fair" : "") + (info.param.guard ? "_guard" : "") +
                      (info.param.pass != 1 ? "_pass" + std::to_string(info.param.pass) : "");
      for (char& c : n) {
        if (c == '-') c = '_';
      }
      return n;
    });

// ---- fair mode ----

// The syscall the process is blocked in, from /proc/PID/syscall: "NR ARG0 ARG1 ...".
bool waiting_in_pi_futex(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/syscall");
  long nr = -1;
  std::string addr, op;
  if (!(in >> nr >> addr >> op)) return false;
  const long code = std::strtol(op.c_str(), nullptr, 16) & 127;  // without FUTEX_PRIVATE_FLAG
  return nr == SYS_futex && (code == FUTEX_LOCK_PI || code == 13 /* FUTEX_LOCK_PI2 */);
}

TEST(ShmFair, WaitersAreGrantedInArrivalOrder) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  struct Log {
    std::atomic<int> n;
    std::atomic<int> order[16];
  };
  Shared<Log> log;
  auto held = Lock::acquire(path, shm(LockMode::exclusive, true));
  constexpr int kWaiters = 6;
  std::vector<pid_t> kids;
  for (int k = 0; k < kWaiters; ++k) {
    kids.push_back(testing::fork_child([&, k] {
      auto l = Lock::acquire(path, shm(LockMode::exclusive, true));
      log->order[log->n.fetch_add(1)].store(k);
      return 0;
    }));
    // Start the next one only once this one is queued in the kernel.
    const auto give_up = Clock::now() + 60s;
    while (!waiting_in_pi_futex(kids.back()) && Clock::now() < give_up) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(waiting_in_pi_futex(kids.back())) << "waiter " << k << " never blocked";
  }
  held.release();
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  ASSERT_EQ(log->n.load(), kWaiters);
  for (int k = 0; k < kWaiters; ++k) EXPECT_EQ(log->order[k].load(), k) << "grant " << k;
}

TEST(ShmFair, OtherBackendsRefuseFairMode) {
  testing::TempDir dir;
  LockOptions o;
  o.backend = Backend::flock;
  o.fair = true;
  try {
    Lock::acquire(dir / "lock", o);
    FAIL() << "fair mode accepted for flock";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::usage);
  }
}

// ---- threads, fork, handles ----

TEST(ShmLock, TwoHandlesInOneThreadExcludeEachOther) {
  StateDir state;
  testing::TempDir dir;
  auto first = Lock::try_acquire(dir / "lock", shm());
  ASSERT_TRUE(first);
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", shm()));
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", shm(LockMode::shared)));
  // Blocking would wait on itself forever: refused instead.
  EXPECT_THROW(Lock::acquire(dir / "lock", shm()), Error);
  first->release();
  EXPECT_TRUE(Lock::try_acquire(dir / "lock", shm()));
}

TEST(ShmLock, AnotherThreadWaitsThenGetsIt) {
  StateDir state;
  testing::TempDir dir;
  auto first = Lock::acquire(dir / "lock", shm());
  std::atomic<bool> got{false};
  std::atomic<bool> tried{false};
  std::thread t([&] {
    tried = !Lock::try_acquire(dir / "lock", shm()).has_value();
    auto l = Lock::acquire(dir / "lock", shm());
    got = true;
  });
  while (!tried) std::this_thread::sleep_for(1ms);
  EXPECT_FALSE(got.load());
  first.release();
  t.join();
  EXPECT_TRUE(got.load());
}

TEST(ShmLock, AThreadThatExitsHoldingItLosesIt) {
  StateDir state;
  testing::TempDir dir;
  std::thread([&] { Lock::acquire(dir / "lock", shm()).detach(); }).join();
  // The kernel found the owner thread gone: the next locker recovers it.
  auto l = Lock::acquire_until(dir / "lock", shm(), Clock::now() + 60s);
  EXPECT_TRUE(l);
}

TEST(ShmLock, ReleaseFromAnotherThreadIsRefused) {
  StateDir state;
  testing::TempDir dir;
  auto l = Lock::acquire(dir / "lock", shm());
  std::thread([&] { EXPECT_THROW(l.release(), Error); }).join();
  EXPECT_TRUE(l.held());
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", shm()));
  l.release();
  EXPECT_TRUE(Lock::try_acquire(dir / "lock", shm()));
}

TEST(ShmLock, AGrantDestroyedInAnotherThreadStaysWithItsOwnerUntilItExits) {
  StateDir state;
  testing::TempDir dir;
  std::optional<Lock> handed;
  std::atomic<int> step{0};
  std::thread owner([&] {
    handed.emplace(Lock::acquire(dir / "lock", shm()));
    step = 1;
    while (step.load() != 2) std::this_thread::sleep_for(1ms);
  });
  while (step.load() != 1) std::this_thread::sleep_for(1ms);
  handed.reset();  // destroyed here: cannot unlock (not the owner thread), and must stay mapped
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", shm()));
  step = 2;
  owner.join();  // the owner thread exits: the kernel marks its mutex owner-dead
  auto l = Lock::acquire_until(dir / "lock", shm(), Clock::now() + 30s);
  EXPECT_TRUE(l) << "the lock was lost with its mapping";
}

TEST(ShmLock, AForkedChildsCopyNeverReleasesTheParentsLock) {
  StateDir state;
  testing::TempDir dir;
  auto l = Lock::acquire(dir / "lock", shm());
  pid_t child = testing::fork_child([&] {
    l.release();  // the child's copy: must not unlock the parent's
    return Lock::try_acquire(dir / "lock", shm()) ? 1 : 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", shm()));
  EXPECT_TRUE(l.held());
}

TEST(ShmLock, NothingIsCreatedBesideTheLockFileAndItIsNeverWritten) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "data";
  { std::ofstream(path) << "user data\n"; }
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  { auto l = Lock::acquire(path, shm()); }
  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_size, after.st_size);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(before.st_mode, after.st_mode);
  auto listing = testing::run({"ls", "-A", dir.path()});
  EXPECT_EQ(listing.out, "data\n");
  EXPECT_FALSE(mapping_in(state).empty());
}

// ---- the mapping: corrupt, truncated, previous boot, another pid namespace ----

void patch(const std::string& file, off_t offset, const std::string& bytes) {
  int fd = ::open(file.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), offset), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

TEST(ShmMapping, CorruptOrTruncatedFailsClosedWithOneLine) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  { auto l = Lock::acquire(path, shm()); }
  const std::string mapping = mapping_in(state);
  ASSERT_FALSE(mapping.empty());
  patch(mapping, 0, "garbage!");
  try {
    Lock::acquire(path, shm());
    FAIL() << "a corrupt mapping was used";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::data);
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(mapping), std::string::npos) << e.what();
  }
  ASSERT_EQ(::truncate(mapping.c_str(), 100), 0);
  EXPECT_THROW(Lock::acquire(path, shm()), Error);
  // The command says the same, in one line, with the documented exit code.
  auto r = testing::holdfast({"lock", "--backend", "shm", path, "true"});
  EXPECT_EQ(r.exit_code, exit_code::data) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(ShmMapping, APreviousBootsMappingIsReinitialisedAndTokensKeepRising) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  uint64_t token = 0;
  {
    auto l = Lock::acquire(path, shm());
    token = l.token();
    l.detach();  // "held" when the machine went down: its futex word names a thread of that boot
  }
  // Another boot's id in the header (offset 16).
  patch(mapping_in(state), 16, std::string("00000000-0000-0000-0000-000000000000", 36));
  auto l = Lock::acquire_until(path, shm(), Clock::now() + 60s);
  ASSERT_TRUE(l);
  EXPECT_GT(l->token() >> 32, token >> 32) << "a new boot starts a new epoch";
}

TEST(ShmMapping, AnotherPidNamespaceIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for CLONE_NEWPID";
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  { auto l = Lock::acquire(path, shm()); }
  pid_t outer = testing::fork_child([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 77;
    pid_t inner = testing::fork_child([&] {
      try {
        Lock::acquire(path, shm());
        return 1;
      } catch (const Error& e) {
        return e.exit_code() == exit_code::unavailable ? 0 : 2;
      }
    });
    return testing::wait_child(inner);
  });
  const int rc = testing::wait_child(outer);
  if (rc == 77) GTEST_SKIP() << "unshare(CLONE_NEWPID) refused here";
  EXPECT_EQ(rc, 0);
}

// ---- the command and the library on the same file ----

TEST(ShmInterop, CommandAndLibraryExcludeEachOther) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  // The command holds it while `cat` waits for its stdin to close.
  int in[2], out[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  const std::string cli = testing::holdfast_path();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::execl(cli.c_str(), cli.c_str(), "lock", "--backend", "shm", path.c_str(), "sh", "-c",
            "echo $HOLDFAST_TOKEN; exec cat >/dev/null", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  std::string line;
  char c = 0;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  ASSERT_FALSE(line.empty());
  const uint64_t command_token = std::stoull(line);
  EXPECT_FALSE(Lock::try_acquire(path, shm()));
  auto holder = testing::holdfast({"holder", path, "--json"});
  EXPECT_NE(holder.out.find("\"shm\""), std::string::npos) << holder.out;
  EXPECT_NE(holder.out.find("held"), std::string::npos) << holder.out;
  ::close(in[1]);  // the command ends; holdfast releases
  EXPECT_EQ(testing::wait_child(pid), 0);
  auto l = Lock::acquire(path, shm());
  EXPECT_GT(l.token(), command_token);
  // And the other way round: the library holds, the command cannot get it.
  auto r = testing::holdfast({"lock", "-n", "--backend", "shm", path, "true"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  l.release();
  r = testing::holdfast({"lock", "-n", "--backend", "shm", "--fair", path, "true"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = testing::holdfast({"lock", "-F", "--backend", "shm", path, "true"});
  EXPECT_EQ(r.exit_code, exit_code::usage) << r.err;
  r = testing::holdfast({"lock", "--fair", path, "true"});
  EXPECT_EQ(r.exit_code, exit_code::usage) << r.err;
}

// ---- the handle's record: lent to the grant, never copied per grant ----

// The record the mapping holds for the current exclusive grant (inspect_holder reads the slot).
// (Every grant's record, per backend and shm included: HandleCache.RepeatedGrantsWriteFreshCompleteRecords.)
HolderRecord record_in_mapping(const std::string& path) {
  HolderInfo info = inspect_holder(path);
  EXPECT_EQ(info.backend, Backend::shm);
  EXPECT_TRUE(info.record.has_value()) << info.reason;
  return info.record.value_or(HolderRecord{});
}

// A released Lock that is still alive keeps its own record (token, nonce, time) while its
// LockFile grants again: the record lent to it is not lent twice.
TEST(ShmHandle, AReleasedLockKeepsItsOwnRecordWhileItsLockFileGrantsAgain) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  for (LockMode mode : {LockMode::exclusive, LockMode::shared}) {
    auto lf = LockFile::open(path, shm(mode));
    auto first = lf.acquire();
    const HolderRecord before = first.record();
    first.release();
    {
      auto second = lf.acquire();
      EXPECT_EQ(first.token(), before.token);
      EXPECT_EQ(first.record().nonce, before.nonce);
      EXPECT_EQ(first.record().acquired_unix_ns, before.acquired_unix_ns);
      EXPECT_NE(second.record().nonce, before.nonce);
      if (mode == LockMode::exclusive) {
        EXPECT_GT(second.token(), before.token);
        EXPECT_EQ(record_in_mapping(path).nonce, second.record().nonce);
      }
    }
    // Both gone: the next grant gets the LockFile's record again, with a fresh nonce.
    auto third = lf.acquire();
    EXPECT_NE(third.record().nonce, before.nonce);
    EXPECT_EQ(third.record().processes.size(), 1U);
  }
}

// A child forked after its parent's LockFile lent its record out and got it back names itself in
// the record of a grant it takes through its copy of that LockFile, never its parent.
TEST(ShmHandle, AForkedChildsGrantThroughTheParentsLockFileNamesTheChild) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto lf = LockFile::open(path, shm());
  uint64_t parent_nonce = 0;
  {
    auto l = lf.acquire();
    parent_nonce = l.record().nonce;
  }
  pid_t child = testing::fork_child([&] {
    auto l = lf.acquire();
    if (l.record().processes.size() != 1 || l.record().processes.front() != self_identity()) return 1;
    if (l.record().processes.front().pid != ::getpid()) return 2;
    if (l.record().nonce == parent_nonce) return 3;
    HolderInfo info = inspect_holder(path);
    if (!info.record || info.record->processes.size() != 1 || info.record->processes.front().pid != ::getpid()) {
      return 4;
    }
    return 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0) << "1-2: record names the parent, 3: nonce, 4: mapping";
  auto l = lf.acquire();
  EXPECT_EQ(l.record().processes.front().pid, ::getpid());
  EXPECT_EQ(record_in_mapping(path).processes.front().pid, ::getpid());
}

// ---- LockFile::Guard, the scoped fast path ----

TEST(ShmGuard, EightProcessesNeverOverlapAndTokensRiseAcrossGuardsAndLocks) {
  StateDir state;
  testing::TempDir dir;
  for (bool fair : {false, true}) {
    for (Via via : {Via::guard, Via::alternate, Via::alternate_timed}) {
      Shared<Detector> d;
      run_workers(*d, dir / "lock", shm(LockMode::exclusive, fair), via, 8, 0);
      EXPECT_EQ(d->overlaps.load(), 0) << "fair=" << fair;
      EXPECT_EQ(d->token_regressions.load(), 0) << "fencing tokens must strictly increase";
      EXPECT_GT(d->entries.load(), 8U);
    }
  }
}

TEST(ShmGuard, TokensStrictlyIncreaseAcrossGuardsAndLocksOfOneLock) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto lf = LockFile::open(path, shm());
  auto other = LockFile::open(path, shm());
  uint64_t last = 0;
  auto rises = [&](uint64_t token, const char* what) {
    EXPECT_GT(token, last) << what;
    last = token;
  };
  for (int i = 0; i < 3; ++i) {
    { LockFile::Guard g(lf); rises(g.token(), "guard"); }
    // The slot still holds lf's record: a repeated grant (the inline path), then a Lock after it.
    { LockFile::Guard g(lf); rises(g.token(), "repeated guard"); }
    rises(lf.acquire().token(), "lock through the guard's LockFile");
    { LockFile::Guard g(lf); rises(g.token(), "guard after a Lock of its LockFile"); }
    { LockFile::Guard g(other); rises(g.token(), "guard through another LockFile"); }
    rises(Lock::acquire(path, shm()).token(), "Lock::acquire");
    pid_t child = testing::fork_child([&] {
      LockFile::Guard g(lf);  // the parent's LockFile, in a child
      return g.token() > last ? 0 : 1;
    });
    EXPECT_EQ(testing::wait_child(child), 0) << "a child's guard got a token below its parent's";
    last = read_holder_record(path).value_or(HolderRecord{}).token;
  }
}

// What `holdfast holder --json` says about `path`.
nlohmann::json holder_json(const std::string& path) {
  auto r = testing::holdfast({"holder", path, "--json"});
  return nlohmann::json::parse(r.out, nullptr, false);
}

TEST(ShmGuard, HolderShowsTheGuardHoldersRecord) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  struct Held {
    std::atomic<uint64_t> token;
    std::atomic<int> round;
    std::atomic<int> go;
  };
  Shared<Held> h;
  for (GrantTime time : {GrantTime::precise, GrantTime::none}) {
    h->round.store(0);
    h->go.store(0);
    const int64_t before = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
    pid_t child = testing::fork_child([&] {
      LockOptions o = shm();
      o.grant_time = time;
      auto lf = LockFile::open(path, o);
      // Round 1: the first grant writes the whole record; round 2: only the grant's own fields.
      for (int round = 1; round <= 2; ++round) {
        LockFile::Guard g(lf);
        h->token.store(g.token());
        h->round.store(round);
        while (h->go.load() < round) ::sched_yield();
      }
      return 0;
    });
    for (int round = 1; round <= 2; ++round) {
      const auto give_up = Clock::now() + 60s;
      while (h->round.load() < round && Clock::now() < give_up) std::this_thread::sleep_for(1ms);
      ASSERT_EQ(h->round.load(), round);
      const auto j = holder_json(path);
      ASSERT_TRUE(j.is_object()) << "round " << round;
      EXPECT_EQ(j.value("state", ""), "held") << j.dump();
      ASSERT_TRUE(j.contains("record")) << j.dump();
      const auto& rec = j["record"];
      EXPECT_EQ(rec.value("token", uint64_t{0}), h->token.load()) << j.dump();
      EXPECT_EQ(rec.value("backend", ""), "shm") << j.dump();
      ASSERT_TRUE(rec.contains("processes") && rec["processes"].size() == 1) << j.dump();
      EXPECT_EQ(rec["processes"][0].value("pid", 0), child) << j.dump();
      EXPECT_NE(rec.value("nonce", uint64_t{0}), 0U) << j.dump();
      const int64_t at = rec.value("acquired_unix_ns", int64_t{-1});
      if (time == GrantTime::none) {
        EXPECT_EQ(at, 0) << "grant_time none records no time";
      } else {
        EXPECT_GE(at, before) << j.dump();
      }
      h->go.store(round);
    }
    EXPECT_EQ(testing::wait_child(child), 0);
  }
  // The text form says the time was not recorded rather than printing 1970.
  {
    LockOptions o = shm();
    o.grant_time = GrantTime::none;
    auto lf = LockFile::open(path, o);
    LockFile::Guard g(lf);
    auto r = testing::holdfast({"holder", path});
    EXPECT_NE(r.out.find("not recorded"), std::string::npos) << r.out;
  }
}

TEST(ShmGuard, GrantTimeCoarseAndNoneReachTheRecordOfLocksToo) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto now_ns = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  LockOptions o = shm();
  o.grant_time = GrantTime::none;
  {
    auto l = Lock::acquire(path, o);
    EXPECT_EQ(l.record().acquired_unix_ns, 0);
    EXPECT_EQ(read_holder_record(path).value_or(HolderRecord{}).acquired_unix_ns, 0);
  }
  o.grant_time = GrantTime::coarse;
  const int64_t before = now_ns();
  auto l = Lock::acquire(path, o);
  const int64_t after = now_ns();
  // The coarse clock is the last tick: at most a jiffy (<= 10 ms at HZ=100) before the call.
  EXPECT_GE(l.record().acquired_unix_ns, before - 20'000'000);
  EXPECT_LE(l.record().acquired_unix_ns, after);
  EXPECT_EQ(read_holder_record(path).value_or(HolderRecord{}).acquired_unix_ns, l.record().acquired_unix_ns);
}

// Misuse is refused with one line (exit 70), takes nothing, and leaves the lock usable.
TEST(ShmGuard, MisuseFailsWithOneLineAndTakesNothing) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto expect_refused = [&](const std::function<void()>& f, const char* what) {
    try {
      f();
      ADD_FAILURE() << what << ": not refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), exit_code::software) << what << ": " << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << what;
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << what << ": " << e.what();
    }
  };
  auto lf = LockFile::open(path, shm());
  {
    LockFile::Guard g(lf);
    expect_refused([&] { LockFile::Guard again(lf); }, "a second guard on the same LockFile");
    expect_refused([&] { lf.acquire(); }, "acquire() while a guard of the LockFile is alive");
    EXPECT_FALSE(lf.try_acquire());
    auto other = LockFile::open(path, shm());
    expect_refused([&] { LockFile::Guard self(other); }, "a guard of a thread that holds the lock already");
  }
  {
    Lock l = lf.acquire();
    expect_refused([&] { LockFile::Guard g(lf); }, "a guard while a Lock of the LockFile is alive");
  }
  {
    // A LockFile whose grant is held by another thread.
    std::atomic<int> step{0};
    std::thread holder([&] {
      LockFile::Guard g(lf);
      step = 1;
      while (step.load() != 2) std::this_thread::sleep_for(1ms);
    });
    while (step.load() != 1) std::this_thread::sleep_for(1ms);
    expect_refused([&] { LockFile::Guard g(lf); }, "a guard on a LockFile another thread holds");
    step = 2;
    holder.join();
  }
  {
    // A reader slot held by this thread: the guard would wait on itself.
    auto reader = Lock::acquire(path, shm(LockMode::shared));
    expect_refused([&] { LockFile::Guard g(lf); }, "a guard of a thread holding it shared");
  }
  // Nothing stayed held: another process gets it, and the LockFile grants again.
  pid_t child = testing::fork_child([&] { return Lock::try_acquire(path, shm()) ? 0 : 1; });
  EXPECT_EQ(testing::wait_child(child), 0) << "a refused guard left the lock held";
  LockFile::Guard g(lf);
  EXPECT_GT(g.token(), 0U);
}

TEST(ShmGuard, AForkedChildsCopyNeverReleasesTheParentsLock) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto lf = LockFile::open(path, shm());
  LockFile::Guard g(lf);
  pid_t child = testing::fork_child([&] {
    g.~Guard();  // the child's copy: must not unlock the parent's
    return Lock::try_acquire(path, shm()) ? 1 : 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
  EXPECT_FALSE(Lock::try_acquire(path, shm()));
}

// True while `pid` sleeps in a futex wait (FUTEX_WAIT or FUTEX_WAIT_BITSET).
bool waiting_in_futex(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/syscall");
  long nr = -1;
  std::string addr, op;
  if (!(in >> nr >> addr >> op)) return false;
  const long code = std::strtol(op.c_str(), nullptr, 16) & 127;
  return nr == SYS_futex && (code == FUTEX_WAIT || code == FUTEX_WAIT_BITSET);
}

// A holder SIGKILLed between releasing the gate's word and waking its waiter, while a third
// process took the word meanwhile, leaves a sleeping waiter whose FUTEX_WAITERS bit is gone with
// the word: the kernel wakes nobody (the word is not free), and the next release sees no waiter.
// Made here by hand (the bit cleared in the word of a held gate): the waiter must still get the
// lock, by looking again after its wait slice, for Lock and for the guard, blocking and timed.
TEST(ShmGuard, AWaiterWhoseWakeUpWasLostStillGetsTheLock) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "under ThreadSanitizer a waiter polls trylock (sys/robust_mutex.cpp): it never sleeps on the futex";
#endif
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  { auto l = Lock::acquire(path, shm()); }
  const std::string mapping = mapping_in(state);
  ASSERT_FALSE(mapping.empty());
  int fd = ::open(mapping.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(p, MAP_FAILED);
  auto* word = reinterpret_cast<std::atomic<uint32_t>*>(static_cast<char*>(p) + 0x140);  // Layout::gate
  for (int how = 0; how < 3; ++how) {
    auto held = Lock::acquire(path, shm());
    ASSERT_EQ(word->load() & FUTEX_TID_MASK, static_cast<uint32_t>(::gettid())) << "the gate is not at 0x140";
    pid_t waiter = testing::fork_child([&] {
      auto lf = LockFile::open(path, shm());
      if (how == 0) {
        LockFile::Guard g(lf);
      } else if (how == 1) {
        auto l = lf.acquire();
      } else {
        if (!lf.acquire_until(Clock::now() + 3600s)) return 2;
      }
      return 0;
    });
    const auto give_up = Clock::now() + 60s;
    while (!(waiting_in_futex(waiter) && (word->load() & FUTEX_WAITERS) != 0) && Clock::now() < give_up) {
      std::this_thread::sleep_for(1ms);
    }
    ASSERT_NE(word->load() & FUTEX_WAITERS, 0U) << "the waiter never slept";
    uint32_t expected = word->load();
    ASSERT_TRUE(word->compare_exchange_strong(expected, expected & ~uint32_t{FUTEX_WAITERS}));
    held.release();  // sees no waiter: wakes nobody
    int status = 0;
    pid_t done = 0;
    while ((done = ::waitpid(waiter, &status, WNOHANG)) == 0 && Clock::now() < give_up) {
      std::this_thread::sleep_for(1ms);
    }
    if (done == 0) {
      ::kill(waiter, SIGKILL);
      ::waitpid(waiter, &status, 0);
      FAIL() << "way " << how << ": the waiter slept on with the lock free";
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "way " << how;
  }
  ::munmap(p, 4096);
}

// A gate some other program left not recoverable (an owner-dead mutex unlocked without
// pthread_mutex_consistent: glibc then marks __owner PTHREAD_MUTEX_NOTRECOVERABLE) is refused by
// the inline path as glibc refuses it — one line, exit 65 — and not taken.
TEST(ShmGuard, ANotRecoverableGateIsRefusedNotTaken) {
#if defined(__SANITIZE_THREAD__)
  // There every wait is glibc's trylock, which on a not recoverable robust mutex returns
  // ENOTRECOVERABLE but keeps the word (glibc 2.36 unlocks it only if it held it before).
  GTEST_SKIP() << "under ThreadSanitizer the gate is taken by glibc's trylock, not the inline path";
#endif
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto lf = LockFile::open(path, shm());
  { LockFile::Guard g(lf); }  // the LockFile's first grant: its next one takes the inline path
  int fd = ::open(mapping_in(state).c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(p, MAP_FAILED);
  auto* word = reinterpret_cast<std::atomic<uint32_t>*>(static_cast<char*>(p) + 0x140);  // Layout::gate
  auto* owner = reinterpret_cast<std::atomic<int32_t>*>(static_cast<char*>(p) + 0x148);  // its __owner
  ASSERT_EQ(word->load(), 0U);
  owner->store(INT32_MAX - 1);
  for (int i = 0; i < 2; ++i) {
    try {
      LockFile::Guard g(lf);
      ADD_FAILURE() << "a not recoverable gate was granted";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), exit_code::data) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
    EXPECT_EQ(word->load() & FUTEX_TID_MASK, 0U) << "refused, but left held";
  }
  EXPECT_THROW(Lock::try_acquire(path, shm()), Error);
  ::munmap(p, 4096);
}

// Other backends and shared mode: the guard holds a Lock, with the same exclusion.
TEST(ShmGuard, FlockAndSharedModeGuardsExcludeWritersAndRelease) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "lock";
  LockOptions flock_options;
  flock_options.backend = Backend::flock;
  for (const LockOptions& o : {flock_options, shm(LockMode::shared)}) {
    auto lf = LockFile::open(path, o);
    uint64_t first = 0;
    {
      LockFile::Guard g(lf);
      first = g.token();
      pid_t child = testing::fork_child([&] {
        LockOptions exclusive = o;
        exclusive.mode = LockMode::exclusive;
        return Lock::try_acquire(path, exclusive) ? 1 : 0;
      });
      EXPECT_EQ(testing::wait_child(child), 0) << to_string(o.backend) << ": a writer got in beside the guard";
    }
    LockOptions exclusive = o;
    exclusive.mode = LockMode::exclusive;
    EXPECT_TRUE(Lock::try_acquire(path, exclusive)) << to_string(o.backend) << ": the guard did not release";
    if (o.backend == Backend::flock) {
      LockFile::Guard g(lf);
      EXPECT_GT(g.token(), first);
    }
  }
}

}  // namespace
}  // namespace holdfast
