// Locking never touches what is not ours: a kernel lock leaves the locked file's content and
// metadata exactly as they were, writes nothing through a symlink, and creates nothing beside it.
// Records and fencing state go to the state directory (HOLDFAST_STATE_DIR), which these tests
// point at a directory of their own.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::read_file;

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  while (auto* e = ::readdir(d)) names.insert(e->d_name);
  ::closedir(d);
  return names;
}

// Everything about a file that locking must leave alone.
struct Snapshot {
  std::string content;
  struct stat st {};
  std::set<std::string> siblings;

  static Snapshot of(const std::string& path, bool follow = true) {
    Snapshot s;
    if (follow) {
      ::stat(path.c_str(), &s.st);
    } else {
      ::lstat(path.c_str(), &s.st);
    }
    if (S_ISREG(s.st.st_mode)) s.content = read_file(path);
    s.siblings = list_dir(path.substr(0, path.rfind('/')));
    return s;
  }
};

void expect_unchanged(const Snapshot& a, const Snapshot& b, const std::string& what) {
  EXPECT_EQ(a.content, b.content) << what;
  EXPECT_EQ(a.st.st_ino, b.st.st_ino) << what;
  EXPECT_EQ(a.st.st_mode, b.st.st_mode) << what;
  EXPECT_EQ(a.st.st_uid, b.st.st_uid) << what;
  EXPECT_EQ(a.st.st_gid, b.st.st_gid) << what;
  EXPECT_EQ(a.st.st_size, b.st.st_size) << what;
  EXPECT_EQ(a.st.st_nlink, b.st.st_nlink) << what;
  EXPECT_EQ(a.st.st_mtim.tv_sec, b.st.st_mtim.tv_sec) << what;
  EXPECT_EQ(a.st.st_mtim.tv_nsec, b.st.st_mtim.tv_nsec) << what;
  EXPECT_EQ(a.st.st_ctim.tv_sec, b.st.st_ctim.tv_sec) << what;
  EXPECT_EQ(a.st.st_ctim.tv_nsec, b.st.st_ctim.tv_nsec) << what;
  EXPECT_EQ(a.siblings, b.siblings) << what << ": something appeared beside the lock file";
}

using testing::StateDir;  // HOLDFAST_STATE_DIR, private to one test

// Takes and releases every lock the backend offers on `path` (exclusive, then shared), with a
// holder process added, as `holdfast lock` does.
void lock_every_way(const std::string& path, Backend backend) {
  {
    auto l = Lock::acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}});
    EXPECT_TRUE(l.held());
    l.add_holder_process(self_identity());
    EXPECT_FALSE(Lock::try_acquire(path, LockOptions{backend, LockMode::exclusive, {}, {}}));
  }
  auto s = Lock::acquire(path, LockOptions{backend, LockMode::shared, {}, {}});
  EXPECT_TRUE(s.held());
}

class DataSafety : public ::testing::TestWithParam<Backend> {};

TEST_P(DataSafety, NonEmptyFileIsLeftExactlyAsItWas) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "data.txt";
  {
    std::ofstream out(path);
    for (int i = 1; i <= 2000; ++i) out << i << "\n";
  }
  ::chmod(path.c_str(), 0640);
  auto before = Snapshot::of(path);
  lock_every_way(path, GetParam());
  expect_unchanged(before, Snapshot::of(path), "data file");
  // The lock was real and recorded, just elsewhere.
  auto l = Lock::acquire(path, LockOptions{GetParam(), LockMode::exclusive, {}, {}});
  EXPECT_GT(l.token(), 0u);
  auto info = inspect_holder(path);
  EXPECT_EQ(info.state, HolderState::held);
  ASSERT_TRUE(info.record);
  EXPECT_EQ(info.record->nonce, l.record().nonce);
}

TEST_P(DataSafety, ScriptLockingItselfIsLeftExactlyAsItWas) {
  // flock(1)'s man-page idiom: the script is the lock file.
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "s.sh";
  std::ofstream(path) << "#!/bin/sh\necho \"critical section of $0\"\n";
  ::chmod(path.c_str(), 0755);
  auto before = Snapshot::of(path);
  lock_every_way(path, GetParam());
  expect_unchanged(before, Snapshot::of(path), "script");
}

INSTANTIATE_TEST_SUITE_P(KernelBackends, DataSafety, ::testing::Values(Backend::flock, Backend::ofd),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// A root-owned 0644 file, locked by uid 65534: flock(2) needs no write permission (as flock(1)).
TEST(DataSafetyFlock, ReadOnlyFileIsLockableByAnotherUserAndUnchanged) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  StateDir state;
  testing::TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  const std::string path = dir / "ro.conf";
  std::ofstream(path) << "setting = 1\n";
  ::chmod(path.c_str(), 0644);
  ::chmod(state.path().substr(0, state.path().rfind('/')).c_str(), 0755);
  auto before = Snapshot::of(path);
  int rc = testing::wait_child(testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 100;
    try {
      auto l = Lock::try_acquire(path, LockOptions{Backend::flock, LockMode::exclusive, {}, {}});
      if (!l) return 1;
      // Another handle (another open file description) is excluded.
      if (Lock::try_acquire(path, LockOptions{Backend::flock, LockMode::exclusive, {}, {}})) return 2;
      auto s = Lock::try_acquire(path, LockOptions{Backend::flock, LockMode::shared, {}, {}});
      if (s) return 3;
      l->release();
      s = Lock::try_acquire(path, LockOptions{Backend::flock, LockMode::shared, {}, {}});
      if (!s) return 4;
      // OFD write locks need write access: refused with a reason, never a silent wrong lock.
      try {
        Lock::try_acquire(path, LockOptions{Backend::ofd, LockMode::exclusive, {}, {}});
        return 5;
      } catch (const Error& e) {
        if (std::string(e.what()).find("flock backend") == std::string::npos) return 6;
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 7;
    }
    return 0;
  }));
  EXPECT_EQ(rc, 0);
  expect_unchanged(before, Snapshot::of(path), "read-only file");
}

TEST(DataSafetyFlock, DirectoryIsLockableAndUnchanged) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "d";
  ASSERT_EQ(::mkdir(path.c_str(), 0755), 0);
  std::ofstream(path + "/inside") << "x";
  auto before = Snapshot::of(path);
  auto inside_before = list_dir(path);
  lock_every_way(path, Backend::flock);
  auto l = Lock::acquire(path, LockOptions{Backend::flock, LockMode::exclusive, {}, {}});
  EXPECT_EQ(inspect_holder(path).state, HolderState::held);
  l.release();
  expect_unchanged(before, Snapshot::of(path), "directory");
  EXPECT_EQ(list_dir(path), inside_before);
  // OFD: a directory cannot be opened for writing, so only shared OFD locks work on it.
  EXPECT_TRUE(Lock::try_acquire(path, LockOptions{Backend::ofd, LockMode::shared, {}, {}}));
  EXPECT_THROW(Lock::try_acquire(path, LockOptions{Backend::ofd, LockMode::exclusive, {}, {}}), Error);
}

TEST(DataSafetyFlock, SymlinkInStickyDirectoryNeverReachesItsTarget) {
  StateDir state;
  testing::TempDir dir;
  const std::string sticky = dir / "tmp";
  ASSERT_EQ(::mkdir(sticky.c_str(), 0777), 0);
  ::chmod(sticky.c_str(), 01777);
  const std::string victim = dir / "victim";
  std::ofstream(victim) << "precious\n";
  const std::string link = sticky + "/app.lock";
  ASSERT_EQ(::symlink(victim.c_str(), link.c_str()), 0);
  auto victim_before = Snapshot::of(victim);
  auto link_before = Snapshot::of(link, /*follow=*/false);
  for (Backend b : {Backend::flock, Backend::ofd}) {
    EXPECT_THROW(Lock::try_acquire(link, LockOptions{b, LockMode::exclusive, {}, {}}), Error);
  }
  expect_unchanged(victim_before, Snapshot::of(victim), "symlink target");
  expect_unchanged(link_before, Snapshot::of(link, /*follow=*/false), "symlink");
}

TEST(DataSafetyFlock, DanglingSymlinkIsNotCreatedThrough) {
  StateDir state;
  testing::TempDir dir;
  const std::string link = dir / "l";
  ASSERT_EQ(::symlink((dir / "target").c_str(), link.c_str()), 0);
  auto before = list_dir(dir.path());
  EXPECT_THROW(Lock::try_acquire(link, LockOptions{Backend::flock, LockMode::exclusive, {}, {}}), Error);
  EXPECT_EQ(list_dir(dir.path()), before) << "the symlink's target was created";
}

TEST(DataSafetyFlock, NewLockFileIsCreatedEmptyLikeFlock1) {
  StateDir state;
  testing::TempDir dir;
  {
    auto l = Lock::acquire(dir / "new.lock", LockOptions{Backend::flock, LockMode::exclusive, {}, {}});
  }
  EXPECT_EQ(list_dir(dir.path()), (std::set<std::string>{".", "..", "new.lock"}));
  EXPECT_EQ(read_file(dir / "new.lock"), "");
}

// holder reports any kernel lock from /proc/locks, even one holdfast did not take.
TEST(DataSafetyFlock, HolderSeesAForeignFlockWithoutRecord) {
  StateDir state;
  testing::TempDir dir;
  const std::string path = dir / "f";
  std::ofstream(path) << "user data";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  auto info = inspect_holder(path);
  EXPECT_EQ(info.state, HolderState::held);
  EXPECT_TRUE(info.kernel_lock_held);
  EXPECT_FALSE(info.record);
  EXPECT_FALSE(info.record_corrupt);
  EXPECT_FALSE(Lock::try_acquire(path, LockOptions{Backend::flock, LockMode::exclusive, {}, {}}));
  ::close(fd);
  EXPECT_EQ(inspect_holder(path).state, HolderState::free);
}

// An unusable state directory costs the token and the record, never the lock.
TEST(DataSafetyFlock, UnusableStateDirectoryStillLocks) {
  testing::TempDir dir;
  std::ofstream(dir / "not-a-dir") << "x";
  StateDir state(dir / "not-a-dir");
  auto l = Lock::acquire(dir / "l", LockOptions{Backend::flock, LockMode::exclusive, {}, {}});
  EXPECT_TRUE(l.held());
  EXPECT_EQ(l.token(), 0u);
  EXPECT_FALSE(Lock::try_acquire(dir / "l", LockOptions{Backend::flock, LockMode::exclusive, {}, {}}));
}

}  // namespace
}  // namespace holdfast
