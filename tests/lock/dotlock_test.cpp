// Dotlock staleness and reclaim: proof of death only, exactly one reclaimer wins, live holders
// are never stolen, and anything unverifiable is held.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using namespace std::chrono_literals;
using testing::dead_identity;
using testing::list_dir;

// Writes a dotlock file as a holder with `processes` would have.
void plant_record(const std::string& path, std::vector<ProcessIdentity> processes, Backend backend = Backend::link,
                  int64_t lease_ms = 0) {
  HolderRecord r;
  r.processes = std::move(processes);
  r.token = 1;
  r.nonce = 42;
  r.backend = backend;
  r.acquired_unix_ns = 1;
  r.command = {"planted"};
  r.lease_ms = lease_ms;
  std::ofstream(path) << r.to_json();
}

void plant_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

void age_file(const std::string& path, std::chrono::seconds by) {
  struct timespec times[2];
  ::clock_gettime(CLOCK_REALTIME, &times[0]);
  times[0].tv_sec -= by.count();
  times[1] = times[0];
  ::utimensat(AT_FDCWD, path.c_str(), times, 0);
}

LockOptions opts(Backend b, std::chrono::milliseconds stale_after = 0ms) {
  return LockOptions{b, LockMode::exclusive, stale_after, {}};
}

class DotlockTest : public ::testing::TestWithParam<Backend> {};

// 8 reclaimers released together on one stale dotlock, 1,000 rounds: exactly one winner each.
TEST_P(DotlockTest, EightReclaimersExactlyOneWinnerPerRound) {
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
  constexpr int kWorkers = 8;
  const int rounds = std::getenv("HOLDFAST_SOAK") ? 10000 : 1000;
  const ProcessIdentity dead = dead_identity();

  struct Shared {
    std::atomic<int> winners;
    std::atomic<int> errors;
    std::atomic<int> release_errors;
    char first_error[512];
    char first_release_error[512];
  };
  auto* shared = static_cast<Shared*>(testing::shared_memory(sizeof(Shared)));
  new (shared) Shared{};
  // Counts an error of round `r`, keeping the first one's message.
  auto count = [](std::atomic<int>& errors, char (&first)[512], int r, const std::exception& e) {
    if (errors.fetch_add(1) == 0) std::snprintf(first, sizeof first, "round %d: %s", r, e.what());
  };
  // Semaphore eventfds: writing 8 wakes all 8 workers at once; each reads 1.
  int start = ::eventfd(0, EFD_SEMAPHORE);
  int finish = ::eventfd(0, EFD_SEMAPHORE);
  int done = ::eventfd(0, 0);
  std::vector<pid_t> kids;
  for (int w = 0; w < kWorkers; ++w) {
    kids.push_back(testing::fork_child([&] {
      for (int r = 0; r < rounds; ++r) {
        uint64_t v;
        if (::read(start, &v, 8) != 8) return 3;
        std::optional<Lock> l;
        try {
          l = Lock::try_acquire(path, opts(backend));
        } catch (const std::exception& e) {
          count(shared->errors, shared->first_error, r, e);
        }
        if (l) shared->winners.fetch_add(1);
        v = 1;
        (void)!::write(done, &v, 8);
        if (::read(finish, &v, 8) != 8) return 3;
        if (l) {
          try {
            l->release();
          } catch (const std::exception& e) {
            count(shared->release_errors, shared->first_release_error, r, e);
          }
        }
        v = 1;
        (void)!::write(done, &v, 8);
      }
      return 0;
    }));
  }
  // False if the workers did not all answer within a minute (one died, or hangs): the test
  // then fails and stops instead of waiting for ctest's timeout.
  auto wait_done = [&] {
    uint64_t total = 0, v = 0;
    while (total < kWorkers) {
      struct pollfd ready {done, POLLIN, 0};
      if (::poll(&ready, 1, 60000) != 1 || ::read(done, &v, 8) != 8) return false;
      total += v;
    }
    return true;
  };
  int bad_rounds = 0;
  for (int r = 0; r < rounds; ++r) {
    plant_record(path, {dead}, backend);
    shared->winners = 0;
    uint64_t v = kWorkers;
    (void)!::write(start, &v, 8);
    bool answered = wait_done();  // every worker has tried; winners still hold
    if (answered && shared->winners.load() != 1) ++bad_rounds;
    v = kWorkers;
    (void)!::write(finish, &v, 8);
    answered = answered && wait_done();  // winners released
    if (!answered) {
      ADD_FAILURE() << "round " << r << ": a worker did not answer within a minute";
      for (pid_t k : kids) ::kill(k, SIGKILL);
      break;
    }
  }
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  EXPECT_EQ(bad_rounds, 0) << "rounds without exactly one winner";
  EXPECT_EQ(shared->errors.load(), 0) << shared->first_error;
  EXPECT_EQ(shared->release_errors.load(), 0) << shared->first_release_error;
  // Reclaim leaves nothing behind: no markers, temp files or moved-aside victims.
  for (const auto& name : list_dir(dir.path())) {
    EXPECT_TRUE(name == "lock.fence") << "leftover file " << name;
  }
  ::close(start);
  ::close(finish);
  ::close(done);
  testing::free_shared_memory(shared, sizeof(Shared));
}

// A live holder's dotlock is never taken, however many reclaimers try.
TEST_P(DotlockTest, LiveHolderIsNeverStolen) {
  const Backend backend = GetParam();
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto held = Lock::acquire(path, opts(backend));
  testing::StartGun gun;
  std::vector<pid_t> kids;
  for (int w = 0; w < 8; ++w) {
    kids.push_back(testing::fork_child([&] {
      gun.wait();
      for (int i = 0; i < 200; ++i) {
        if (Lock::try_acquire(path, opts(backend))) return 1;
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) EXPECT_EQ(testing::wait_child(k), 0);
  auto record = read_holder_record(path);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->nonce, held.record().nonce);
  held.release();
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"lock.fence"});
}

TEST_P(DotlockTest, LivePidWithAnotherStartTimeIsStale) {
  testing::TempDir dir;
  auto me = self_identity();
  me.start_time += 12345;  // our pid, but not our process: the pid was reused
  plant_record(dir / "lock", {me}, GetParam());
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::stale);
  EXPECT_TRUE(Lock::try_acquire(dir / "lock", opts(GetParam())));
}

TEST_P(DotlockTest, RecordFromAnotherHostIsHeld) {
  testing::TempDir dir;
  auto other = dead_identity();
  other.host = "far-away-host";
  plant_record(dir / "lock", {other}, GetParam());
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::held);
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", opts(GetParam())));
}

TEST_P(DotlockTest, AnotherHostsLeaseExpiresOnlyWhenItsHeartbeatStops) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto other = self_identity();
  other.host = "far-away-host";
  plant_record(path, {other}, GetParam(), /*lease_ms=*/2000);
  // Fresh mtime: the remote holder's heartbeat is recent.
  EXPECT_FALSE(Lock::try_acquire(path, opts(GetParam())));
  // No heartbeat for longer than the lease: reclaimable.
  age_file(path, 10s);
  EXPECT_TRUE(Lock::try_acquire(path, opts(GetParam())));
}

TEST_P(DotlockTest, WaitersLeaseAppliesToAnUnleasedRemoteRecord) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto other = self_identity();
  other.host = "far-away-host";
  plant_record(path, {other}, GetParam());
  age_file(path, 10s);
  EXPECT_FALSE(Lock::try_acquire(path, opts(GetParam())));  // fail closed by default
  EXPECT_TRUE(Lock::try_acquire(path, opts(GetParam(), 5000ms)));
}

TEST_P(DotlockTest, HolderHeartbeatRefreshesMtime) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto l = Lock::acquire(path, opts(GetParam(), 150ms));
  age_file(path, 100s);
  struct stat before {};
  ::stat(path.c_str(), &before);
  std::this_thread::sleep_for(400ms);
  struct stat after {};
  ::stat(path.c_str(), &after);
  EXPECT_GT(after.st_mtim.tv_sec, before.st_mtim.tv_sec) << "heartbeat did not touch the lock";
}

TEST_P(DotlockTest, UnreadableRecordIsHeld) {
  testing::TempDir dir;
  for (const std::string text : {"", "{\"holdfast\":1,\"processes\":[", "garbage\n\x01\x02"}) {
    plant_text(dir / "lock", text);
    age_file(dir / "lock", 1000s);
    // An acquirer of a dotlock treats every unreadable record as held.
    EXPECT_FALSE(Lock::try_acquire(dir / "lock", opts(GetParam()))) << "record: " << text;
  }
  // Inspection cannot tell an empty or foreign file from a user's file locked with flock(1), so
  // it says held only for a damaged holdfast record, or for foreign bytes beside a dotlock's
  // fence file (a dotlock that was granted before).
  plant_text(dir / "lock", "{\"holdfast\":1,\"processes\":[");
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::held);
  plant_text(dir / "lock", "garbage\n\x01\x02");
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::free) << "a user's file is not a dotlock";
  plant_text(dir / "lock.fence", "");
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::held);
}

TEST_P(DotlockTest, RecordNamingALiveCommandStaysHeldAfterTheFirstProcessDies) {
  // `holdfast lock` names both itself and the command; killing holdfast alone proves nothing.
  testing::TempDir dir;
  plant_record(dir / "lock", {dead_identity(), self_identity()}, GetParam());
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::held);
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", opts(GetParam())));
  plant_record(dir / "lock", {dead_identity(), dead_identity()}, GetParam());
  EXPECT_TRUE(Lock::try_acquire(dir / "lock", opts(GetParam())));
}

TEST_P(DotlockTest, RecordFromAnEarlierBootIsStale) {
  testing::TempDir dir;
  auto me = self_identity();
  me.boot_id = "00000000-1111-2222-3333-444444444444";
  plant_record(dir / "lock", {me}, GetParam());
  EXPECT_TRUE(Lock::try_acquire(dir / "lock", opts(GetParam())));
}

// S4: a record from a machine that shares our host name (another machine id) is another host's:
// its other boot id is no proof of a reboot, so it is held.
TEST_P(DotlockTest, RecordFromAnotherMachineWithOurHostNameIsHeld) {
  testing::TempDir dir;
  auto twin = self_identity();
  twin.boot_id = "00000000-1111-2222-3333-444444444444";
  twin.machine_id = "not-" + this_machine_id() + "-machine";
  plant_record(dir / "lock", {twin}, GetParam());
  EXPECT_EQ(inspect_holder(dir / "lock").state, HolderState::held);
  EXPECT_FALSE(Lock::try_acquire(dir / "lock", opts(GetParam())));
}

// S3: a lease is judged on the filesystem's clock, not the waiter's. A waiter whose clock runs
// two hours ahead (libfaketime; file timestamps left real, as a file server sets them) must not
// reclaim a remote holder whose heartbeat is fresh; a holder whose heartbeat really stopped is
// still reclaimed.
TEST_P(DotlockTest, S3_WaiterClockAheadOfTheFilesystemDoesNotStealALease) {
  if (::access("/usr/bin/faketime", X_OK) != 0) GTEST_SKIP() << "faketime(1) is not installed";
  testing::TempDir dir;
  const std::string path = dir / "lock";
  auto other = self_identity();
  other.host = "far-away-host";
  plant_record(path, {other}, GetParam(), /*lease_ms=*/60000);
  const std::string backend(to_string(GetParam()));
  const std::string waiter = "NO_FAKE_STAT=1 /usr/bin/faketime -f +2h '" + testing::holdfast_path() +
                             "' lock -n --backend " + backend + " '" + path + "' true";
  int status = std::system(waiter.c_str());
  ASSERT_TRUE(WIFEXITED(status)) << waiter;
  EXPECT_EQ(WEXITSTATUS(status), 1) << "a waiter with a fast clock reclaimed a heartbeating holder";
  EXPECT_EQ(inspect_holder(path).state, HolderState::held);
  age_file(path, std::chrono::hours(3));
  EXPECT_TRUE(Lock::try_acquire(path, opts(GetParam()))) << "a lease that really expired";
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"lock.fence"}) << "a clock file was left behind";
}

// A reclaimer that crashed holding a reclaim marker does not block reclaim forever: the marker's
// own holder is dead, so the marker is reclaimed the same way.
TEST_P(DotlockTest, DeadReclaimersMarkerIsItselfReclaimed) {
  testing::TempDir dir;
  const std::string path = dir / "lock";
  plant_record(path, {dead_identity()}, GetParam());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  char marker[256];
  std::snprintf(marker, sizeof marker, "%s/.lock.reclaim.%016llx-%016llx", dir.path().c_str(),
                static_cast<unsigned long long>(st.st_dev), static_cast<unsigned long long>(st.st_ino));
  plant_record(marker, {dead_identity()}, GetParam());
  EXPECT_TRUE(Lock::try_acquire(path, opts(GetParam())));
}

// Behind a /proc mounted with hidepid, another user's process is invisible and kill(2) says
// EPERM: liveness cannot be verified, so the lock is held — even with a mismatching start time.
TEST_P(DotlockTest, EpermPidBehindHiddenProcIsHeld) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a private /proc";
  testing::TempDir dir;
  ::chmod(dir.path().c_str(), 0777);
  const std::string path = dir / "lock";
  auto root_process = self_identity();  // owned by root, so hidden from uid 65534
  root_process.start_time += 1;         // even a start-time mismatch must not count: it is not visible
  plant_record(path, {root_process}, GetParam());
  ::chmod(path.c_str(), 0666);
  const Backend backend = GetParam();
  int rc = testing::wait_child(testing::fork_child([&] {
    if (::unshare(CLONE_NEWNS) != 0) return 10;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 10;
    if (::mount("proc", "/proc", "proc", 0, "hidepid=2") != 0) return 10;
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;
    struct stat st {};
    std::string own = "/proc/" + std::to_string(root_process.pid);
    if (::stat(own.c_str(), &st) == 0) return 11;  // hidepid did not hide it
    return Lock::try_acquire(path, opts(backend)) ? 1 : 0;
  }));
  if (rc == 10 || rc == 11) GTEST_SKIP() << "cannot mount a hidepid /proc here (rc " << rc << ")";
  EXPECT_EQ(rc, 0) << "a lock whose holder cannot be inspected (EPERM) was taken";
}

INSTANTIATE_TEST_SUITE_P(Dotlocks, DotlockTest, ::testing::Values(Backend::excl, Backend::link),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace holdfast

namespace holdfast {
namespace {

// Restores the working directory on scope exit (the test changes it while holding a lock).
class CwdGuard {
 public:
  CwdGuard() : fd_(::open(".", O_PATH | O_DIRECTORY | O_CLOEXEC)) {}
  ~CwdGuard() {
    if (fd_ >= 0) {
      (void)!::fchdir(fd_);
      ::close(fd_);
    }
  }
  CwdGuard(const CwdGuard&) = delete;
  CwdGuard& operator=(const CwdGuard&) = delete;

 private:
  int fd_;
};

// S8: a dotlock taken by a relative path is released in the directory it was taken in, even
// after chdir(); a file of the same name in the new working directory is left alone.
TEST_P(DotlockTest, ReleaseAfterChdirActsOnTheLocksOwnDirectory) {
  testing::TempDir taken_in;
  testing::TempDir elsewhere;
  plant_text(elsewhere / "lock", "not a lock of ours\n");
  CwdGuard restore;
  ASSERT_EQ(::chdir(taken_in.path().c_str()), 0);
  auto l = Lock::acquire("lock", opts(GetParam()));
  ASSERT_EQ(::chdir(elsewhere.path().c_str()), 0);
  EXPECT_NO_THROW(l.release());
  struct stat st {};
  EXPECT_NE(::stat((taken_in / "lock").c_str(), &st), 0) << "our dotlock stayed behind";
  std::ifstream other(elsewhere / "lock");
  std::string text;
  std::getline(other, text);
  EXPECT_EQ(text, "not a lock of ours");
}

}  // namespace
}  // namespace holdfast
