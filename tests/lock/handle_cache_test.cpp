// The handle's hot path caches what does not change between grants (the record's invariant part,
// the fence's epoch line, the pid): every grant must still write exactly the record a fresh one
// would, and a forked child must never write its parent's identity.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/lock.hpp"
#include "lock/internal.hpp"
#include "support/testing.hpp"
#include "sys/process.hpp"

namespace holdfast {
namespace {

using holdfast::testing::TempDir;

using testing::StateDir;  // HOLDFAST_STATE_DIR, private to one test

class HandleCache : public ::testing::TestWithParam<Backend> {};

// Every grant's record as written (on disk, or in the shm mapping's slot) parses, names exactly
// this process, carries the grant's own token, time and a nonce no earlier grant had; a grant that
// added a process does not leave that process in the next grant's record. Grants end by release()
// and by the Lock's destructor in turn (the shm backend lends the LockFile's record to each grant).
TEST_P(HandleCache, RepeatedGrantsWriteFreshCompleteRecords) {
  TempDir dir;
  StateDir state(dir / "state");
  const std::string path = dir / "a.lock";
  auto lf = LockFile::open(path, LockOptions{GetParam()});
  std::set<uint64_t> nonces;
  uint64_t last_token = 0;
  for (int round = 0; round < 50; ++round) {
    auto l = lf.acquire();
    if (round == 10) {
      // A process added to one grant (as `holdfast lock` adds its command) is that grant's only.
      auto other = identity_of(::getppid());
      ASSERT_TRUE(other);
      l.add_holder_process(*other);
      auto on_disk = read_holder_record(path);
      ASSERT_TRUE(on_disk);
      EXPECT_EQ(on_disk->processes.size(), 2U);
    } else {
      auto on_disk = read_holder_record(path);
      ASSERT_TRUE(on_disk) << "round " << round;
      ASSERT_EQ(on_disk->processes.size(), 1U) << "round " << round;
      EXPECT_EQ(on_disk->processes.front(), self_identity());
      EXPECT_EQ(on_disk->token, l.token());
      EXPECT_EQ(on_disk->nonce, l.record().nonce);
      EXPECT_EQ(on_disk->acquired_unix_ns, l.record().acquired_unix_ns);
    }
    EXPECT_GT(l.token(), last_token);
    last_token = l.token();
    EXPECT_TRUE(nonces.insert(l.record().nonce).second) << "nonce reused in round " << round;
    EXPECT_EQ(l.record().processes.size(), round == 10 ? 2U : 1U);
    if (round % 2 == 0) l.release();  // odd rounds: released by the Lock's destructor
  }
}

// Another handle (here in a child process) writes a longer record than this handle's; this
// handle's next grant writes its shorter one over it. The file must still parse and name only
// this grant: padding to the size this handle learnt at its first grant would leave the end of
// the longer record behind the newline.
TEST_P(HandleCache, AShorterRecordWrittenOverALongerOneFromAnotherHandleStillParses) {
  TempDir dir;
  StateDir state(dir / "state");
  const std::string path = dir / "a.lock";
  auto lf = LockFile::open(path, LockOptions{GetParam()});
  lf.acquire().release();  // this handle learns the record file and its size
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int rc = 1;
    try {
      auto other = LockFile::open(path, LockOptions{GetParam()});
      auto l = other.acquire();
      ProcessIdentity extra = l.record().processes.front();
      extra.host = std::string(600, 'h');  // a record hundreds of bytes longer
      l.add_holder_process(extra);
      auto written = read_holder_record(path);
      rc = written && written->processes.size() == 2 ? 0 : 2;
    } catch (...) {
      rc = 3;
    }
    ::_exit(rc);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  for (int round = 0; round < 3; ++round) {
    auto l = lf.acquire();
    auto on_disk = read_holder_record(path);
    ASSERT_TRUE(on_disk) << "round " << round << ": the record no longer parses";
    ASSERT_EQ(on_disk->processes.size(), 1U);
    EXPECT_EQ(on_disk->processes.front(), self_identity());
    EXPECT_EQ(on_disk->token, l.token());
  }
}

// A child forked after its parent's LockFile cached the record writes its own pid, start time
// and a nonce of its own, through a LockFile it opens, and the parent's next grant names the
// parent again.
TEST_P(HandleCache, ForkedChildNeverWritesItsParentsIdentity) {
  TempDir dir;
  StateDir state(dir / "state");
  const std::string path = dir / "a.lock";
  auto lf = LockFile::open(path, LockOptions{GetParam()});
  uint64_t parent_nonce = 0;
  {
    auto l = lf.acquire();
    parent_nonce = l.record().nonce;
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int rc = 0;
    try {
      if (sys::current_pid() != ::getpid()) rc = 10;
      if (self_identity().pid != ::getpid()) rc = 11;
      auto mine = LockFile::open(path, LockOptions{GetParam()});
      auto l = mine.acquire();
      auto on_disk = read_holder_record(path);
      if (!on_disk || on_disk->processes.size() != 1) rc = 12;
      else if (on_disk->processes.front().pid != ::getpid()) rc = 13;
      else if (on_disk->processes.front() != self_identity()) rc = 14;
      else if (on_disk->nonce == parent_nonce) rc = 15;
    } catch (...) {
      rc = 20;
    }
    ::_exit(rc);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: cached pid, 11: identity, 12-14: record, 15: nonce, 20: threw";
  auto l = lf.acquire();
  auto on_disk = read_holder_record(path);
  ASSERT_TRUE(on_disk);
  ASSERT_EQ(on_disk->processes.size(), 1U);
  EXPECT_EQ(on_disk->processes.front().pid, ::getpid());
}

// A forked child that goes on using its parent's LockFile (as a multiprocessing worker would
// with an inherited lock object) must name itself, even in a grant taken while a Lock from its
// first grant is still alive (that grant keeps its record, so the next one needs another): the
// record the parent's grants left cached names the parent, and a dotlock naming a process other
// than its holder is judged by the wrong process's life.
TEST_P(HandleCache, ForkedChildUsingItsParentsLockFileNamesItself) {
  TempDir dir;
  StateDir state(dir / "state");
  const std::string path = dir / "a.lock";
  auto lf = LockFile::open(path, LockOptions{GetParam()});
  {
    // The parent's records, cached when each grant ends; a grant taken while an earlier Lock is
    // alive gets a record of its own (not the LockFile's), which is kept for later grants.
    auto earlier = lf.acquire();
    earlier.release();
    auto l = lf.acquire();
  }
  const pid_t child = holdfast::testing::fork_child([&] {
    auto first = lf.acquire();
    first.release();  // released, but alive: it keeps its own record
    auto second = lf.acquire();
    if (second.record().processes.front().pid != ::getpid()) return 11;
    auto on_disk = read_holder_record(path);
    if (!on_disk || on_disk->processes.size() != 1) return 12;
    if (on_disk->processes.front() != self_identity()) return 13;
    return 0;
  });
  EXPECT_EQ(holdfast::testing::wait_child(child), 0) << "11: grant's record, 12-13: record on disk names the parent";
  auto l = lf.acquire();
  auto on_disk = read_holder_record(path);
  ASSERT_TRUE(on_disk);
  EXPECT_EQ(on_disk->processes.front(), self_identity());
}

// A LockFile's nonces are consecutive from a random start (so that a grant formats only their
// last digits): a child forked with the LockFile must start afresh, or its grants would carry
// the very nonces its parent's next grants carry.
TEST_P(HandleCache, ForkedChildUsingItsParentsLockFileNeverRepeatsItsNonces) {
  TempDir dir;
  StateDir state(dir / "state");
  const std::string path = dir / "a.lock";
  auto lf = LockFile::open(path, LockOptions{GetParam()});
  constexpr int kGrants = 20;
  for (int i = 0; i < 3; ++i) lf.acquire().release();  // the parent's start is drawn and used
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = holdfast::testing::fork_child([&] {
    for (int i = 0; i < kGrants; ++i) {
      auto l = lf.acquire();
      const uint64_t nonce = l.record().nonce;
      if (::write(fds[1], &nonce, sizeof nonce) != static_cast<ssize_t>(sizeof nonce)) return 1;
    }
    return 0;
  });
  ::close(fds[1]);
  std::set<uint64_t> nonces;
  uint64_t nonce = 0;
  while (::read(fds[0], &nonce, sizeof nonce) == static_cast<ssize_t>(sizeof nonce)) nonces.insert(nonce);
  ::close(fds[0]);
  ASSERT_EQ(holdfast::testing::wait_child(child), 0);
  ASSERT_EQ(nonces.size(), static_cast<size_t>(kGrants));
  for (int i = 0; i < kGrants; ++i) {
    auto l = lf.acquire();
    EXPECT_TRUE(nonces.insert(l.record().nonce).second) << "the parent's grant " << i << " repeats a child's nonce";
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, HandleCache, ::testing::Values(Backend::ofd, Backend::flock, Backend::excl,
                                                                   Backend::link, Backend::shm),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(UniqueValues, NeverRepeatWithinAProcessAndDifferAcrossAFork) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 100000; ++i) ASSERT_TRUE(seen.insert(sys::unique_u64()).second);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    uint64_t v = sys::unique_u64();
    ssize_t n = ::write(fds[1], &v, sizeof v);
    ::_exit(n == sizeof v ? 0 : 1);
  }
  ::close(fds[1]);
  uint64_t from_child = 0;
  ASSERT_EQ(::read(fds[0], &from_child, sizeof from_child), static_cast<ssize_t>(sizeof from_child));
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  // The child drew its own key: its first value is not the parent's next one, nor any earlier.
  EXPECT_EQ(seen.count(from_child), 0U);
  EXPECT_NE(from_child, sys::unique_u64());
}

// The head's integers are formatted eight digits at a time: every length from 1 to 20 digits,
// each power of ten and its neighbours, and values with zero runs inside, as std::to_chars does
// (the token then padded with spaces to 20 bytes).
TEST(HolderRecordHead, EveryDigitCountFormatsAsToChars) {
  std::vector<uint64_t> values = {0, UINT64_MAX, 100000000, 10000000000000000ULL, 1000000000000000001ULL,
                                  12345678900000000ULL, 10000000010000000ULL, 9999999999999999999ULL};
  uint64_t power = 1;
  for (int digits = 1; digits <= 20; ++digits) {
    values.insert(values.end(), {power - 1, power, power + 1, power * 2, power * 9 + (power - 1)});
    if (digits < 20) power *= 10;
  }
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (int i = 0; i < 2000; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    values.push_back(x >> (i % 64));
  }
  auto decimal = [](auto v) {
    char buf[24];
    return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
  };
  // A grant's cache of the digits above the last eight, through runs of values that share them
  // (consecutive tokens) and values that do not.
  lock_internal::RecordHeadCache cache;
  for (uint64_t v : values) {
    for (uint64_t w : {v, v + 1, v + 2}) {
      const std::string token = decimal(w);  // padded to its fixed width (format_record_head)
      const std::string want = "{\"holdfast\":1,\"token\":" + token + std::string(20 - token.size(), ' ') +
                               ",\"nonce\":" + decimal(~w) +
                               ",\"acquired_unix_ns\":" + decimal(static_cast<int64_t>(w));
      std::string head;
      lock_internal::append_record_head(head, w, ~w, static_cast<int64_t>(w));
      EXPECT_EQ(head, want);
      char buf[lock_internal::kRecordHeadRoom];
      const size_t n = lock_internal::format_record_head(buf, w, ~w, static_cast<int64_t>(w), &cache);
      EXPECT_EQ(std::string(buf, n), want);
    }
  }
}

TEST(HolderRecordHead, ExtremeAndNegativeValuesRoundTrip) {
  HolderRecord r;
  r.processes = {{1, 2, "b", "h"}};
  for (int64_t t : {int64_t{0}, int64_t{-1}, int64_t{9}, int64_t{10}, int64_t{99}, int64_t{100}, INT64_MIN, INT64_MAX}) {
    for (uint64_t v : {uint64_t{0}, uint64_t{7}, uint64_t{10}, uint64_t{12345678901234567890ULL}, UINT64_MAX}) {
      r.acquired_unix_ns = t;
      r.token = v;
      r.nonce = ~v;
      auto back = HolderRecord::parse(r.to_json());
      ASSERT_TRUE(back) << r.to_json();
      EXPECT_EQ(back->acquired_unix_ns, t);
      EXPECT_EQ(back->token, v);
      EXPECT_EQ(back->nonce, ~v);
    }
  }
}

}  // namespace
}  // namespace holdfast

namespace holdfast {
namespace {

// Descriptors of this process open on files of `dir` whose names end in `suffix`.
int open_in_dir(const std::string& dir, const std::string& suffix) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind(dir + "/", 0) == 0 && target.size() >= suffix.size() &&
        target.compare(target.size() - suffix.size(), suffix.size(), suffix) == 0) {
      ++n;
    }
  }
  return n;
}

// A kernel-lock waiter opens its fence and record files before it blocks, so that when the lock
// is handed to it (released, or its holder died) it only issues its token and stores its record.
TEST(KernelWaiter, OpensItsStateFilesBeforeItBlocks) {
  for (Backend backend : {Backend::ofd, Backend::flock}) {
    TempDir dir;
    const std::string state_dir = dir / "state";
    StateDir state(state_dir);
    const std::string path = dir / "a.lock";
    auto holder_file = LockFile::open(path, LockOptions{backend});
    auto held = holder_file.acquire();
    ASSERT_EQ(open_in_dir(state_dir, ".fence"), 1);
    ASSERT_EQ(open_in_dir(state_dir, ".holder"), 1);
    uint64_t waiter_token = 0;
    std::thread waiter([&] {
      auto waiter_file = LockFile::open(path, LockOptions{backend});
      waiter_token = waiter_file.acquire().token();
    });
    // The waiter's own descriptors appear while it is still blocked (we hold the lock).
    bool opened = false;
    for (int i = 0; i < 10000 && !opened; ++i) {
      opened = open_in_dir(state_dir, ".fence") == 2 && open_in_dir(state_dir, ".holder") == 2;
      if (!opened) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const uint64_t holder_token = held.token();
    held.release();
    waiter.join();
    EXPECT_TRUE(opened) << to_string(backend) << ": the waiter opened its state files only after the grant";
    EXPECT_GT(waiter_token, holder_token);
  }
}

// RecordWrite::at_first_added_holder (what `holdfast lock` uses when it forks its command): the
// grant issues its token at once but leaves the record file alone, still the previous grant's,
// until the first holder is added; the record then names this process and the added one, with
// the grant's token and the time of the grant. A grant that never adds one writes no record.
// Through Lock::acquire and through a LockFile (whose record file is mapped).
TEST(KernelRecordLater, WaitsForTheFirstAddedHolderAndTheTokenDoesNot) {
  for (Backend backend : {Backend::ofd, Backend::flock}) {
    SCOPED_TRACE(std::string(to_string(backend)));
    TempDir dir;
    StateDir state(dir / "state");
    const std::string path = dir / "a.lock";
    LockOptions now{backend};
    LockOptions later{backend};
    later.record_write = RecordWrite::at_first_added_holder;
    auto other = identity_of(::getppid());
    ASSERT_TRUE(other);

    uint64_t previous_token = Lock::acquire(path, now).token();
    auto lf = LockFile::open(path, later);
    for (int round = 0; round < 4; ++round) {
      SCOPED_TRACE("round " + std::to_string(round));
      const int64_t before = lock_internal::unix_ns_now();
      auto l = round % 2 == 0 ? Lock::acquire(path, later) : lf.acquire();
      const int64_t after = lock_internal::unix_ns_now();
      EXPECT_GT(l.token(), previous_token);
      EXPECT_TRUE(l.record().processes.empty());
      auto on_disk = read_holder_record(path);
      ASSERT_TRUE(on_disk);
      EXPECT_EQ(on_disk->token, previous_token) << "the record was written before a holder was added";
      EXPECT_EQ(inspect_holder(path).state, HolderState::held);
      if (round == 3) break;  // no holder added: the record stays the previous grant's
      l.add_holder_process(*other);
      on_disk = read_holder_record(path);
      ASSERT_TRUE(on_disk);
      ASSERT_EQ(on_disk->processes.size(), 2U);
      EXPECT_EQ(on_disk->processes[0], self_identity());
      EXPECT_EQ(on_disk->processes[1], *other);
      EXPECT_EQ(on_disk->token, l.token());
      EXPECT_EQ(on_disk->backend, backend);
      EXPECT_GE(on_disk->acquired_unix_ns, before);
      EXPECT_LE(on_disk->acquired_unix_ns, after);
      EXPECT_EQ(on_disk->nonce, l.record().nonce);
      EXPECT_EQ(on_disk->acquired_unix_ns, l.record().acquired_unix_ns);
      previous_token = l.token();
    }
    EXPECT_EQ(read_holder_record(path)->token, previous_token);
  }
}

// A dotlock waiter sleeps on its live holder's pidfd and on the lock's directory: whenever the
// holder dies (before, while or after the waiter starts waiting), the waiter is woken, proves the
// death and reclaims. Repeated so that the death lands at different moments of the wait.
TEST(DotlockWaiter, GetsTheLockWhenItsHolderIsKilledAtAnyMoment) {
  for (Backend backend : {Backend::excl, Backend::link}) {
    for (int round = 0; round < 10; ++round) {
      holdfast::testing::TempDir dir;
      const std::string path = dir / "a.lock";
      int ready[2];
      int die[2];
      ASSERT_EQ(::pipe(ready), 0);
      ASSERT_EQ(::pipe(die), 0);
      const pid_t holder = holdfast::testing::fork_child([&] {
        auto l = Lock::acquire(path, LockOptions{backend});
        (void)!::write(ready[1], "r", 1);
        char c;
        (void)!::read(die[0], &c, 1);
        ::raise(SIGKILL);
        return 1;
      });
      char c;
      ASSERT_EQ(::read(ready[0], &c, 1), 1);
      // The kill is requested from another thread while this one starts waiting; the holder stays
      // an unreaped zombie until the end (a zombie is dead: its pidfd is readable).
      std::thread killer([&] { (void)!::write(die[1], "k", 1); });
      auto l = Lock::acquire_until(path, LockOptions{backend}, std::chrono::steady_clock::now() + std::chrono::minutes(2));
      killer.join();
      ASSERT_TRUE(l) << to_string(backend) << " round " << round;
      EXPECT_EQ(l->record().processes.front().pid, ::getpid());
      l->release();
      EXPECT_EQ(holdfast::testing::wait_child(holder), 128 + SIGKILL);
      for (int fd : {ready[0], ready[1], die[0], die[1]}) ::close(fd);
    }
  }
}

}  // namespace
}  // namespace holdfast

namespace holdfast {
namespace {

// The fence counter is read through a shared mapping only while the file's last stat shows the
// whole layout: a fence file cut short under an open handle is read with pread (never touched
// beyond its end, which would raise SIGBUS) and, being unreadable, fails closed.
TEST(MappedFence, AFenceFileCutShortUnderAnOpenHandleFailsClosedWithoutACrash) {
  for (Backend backend : {Backend::ofd, Backend::flock, Backend::link}) {
    holdfast::testing::TempDir dir;
    StateDir state(dir / "state");
    const std::string path = dir / "a.lock";
    auto lf = LockFile::open(path, LockOptions{backend});
    uint64_t first = 0;
    {
      auto l = lf.acquire();
      first = l.token();
      ASSERT_GT(first, 0U);
    }
    {
      auto l = lf.acquire();  // through the mapping now
      EXPECT_GT(l.token(), first);
    }
    // Find the fence file: the dotlock's sidecar, or the one state file named *.fence.
    std::string fence = path + ".fence";
    if (backend != Backend::link) {
      fence.clear();
      for (const auto& e : std::filesystem::directory_iterator(dir / "state")) {
        if (e.path().extension() == ".fence") fence = e.path().string();
      }
    }
    ASSERT_FALSE(fence.empty());
    ASSERT_EQ(::truncate(fence.c_str(), 50), 0);
    EXPECT_THROW(lf.acquire(), Error) << to_string(backend);
    // Cut to nothing: as if deleted, the next grant starts a new, durably written epoch.
    ASSERT_EQ(::truncate(fence.c_str(), 0), 0);
    auto l = lf.acquire();
    EXPECT_GT(l.token(), 0U);
  }
}

}  // namespace
}  // namespace holdfast
