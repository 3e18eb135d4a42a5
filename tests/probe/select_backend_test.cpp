// Backend::automatic and explicit backends, decided from measurements (src/lock/select_backend.cpp,
// src/probe/verdict.cpp, src/probe/verdict_cache.cpp): flock where kernel locks are enforced, fail
// closed where nothing can be measured (review C19), verdicts remembered per mount across
// processes and forgotten when the mount changes, forged verdicts ignored, and explicit backends
// that this filesystem is known to break refused.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
#include "support/faultfs.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::FaultFs;

constexpr uid_t kNobody = 65534;

using testing::TmpfsMount;

// Drops to uid/gid 65534 in a forked child, with a fresh view (no in-process verdicts, no
// verdict directory from the environment).
void become_nobody() {
  if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
      ::setresuid(kNobody, kNobody, kNobody) != 0) {
    ::_exit(90);
  }
  ::unsetenv("HOLDFAST_VERDICT_DIR");
  ::unsetenv("XDG_RUNTIME_DIR");
  probe_internal::forget_process_verdicts();
}

// A root-owned 0755 directory holding a pre-created 0666 lock file, inside `mount` (whose
// parent is opened up so uid 65534 can reach it). Returns the lock file's path.
std::string shared_lock_setup(const std::string& mount) {
  ::chmod(std::filesystem::path(mount).parent_path().c_str(), 0755);
  ::chmod(mount.c_str(), 0755);
  const std::string dir = mount + "/d";
  EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0) << std::strerror(errno);
  const std::string lock = dir + "/app.lock";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  EXPECT_GE(fd, 0);
  ::fchmod(fd, 0666);
  ::close(fd);
  for (const char* extra : {".fence"}) {  // the lock core's fencing file, as a setup script would make it
    fd = ::open((lock + extra).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    ::fchmod(fd, 0666);
    ::close(fd);
  }
  return lock;
}

// ---- automatic picks flock where kernel locks are enforced ----

TEST(SelectBackend, AutomaticIsFlockAndExcludesFlock1) {
  testing::TempDir dir("/dev/shm");
  auto choice = select_backend(dir.path());
  EXPECT_EQ(choice.backend, Backend::flock) << choice.reason;
  const std::string path = dir / "mixed.lock";
  // flock(1) holds the file; holdfast's default must be refused (review C3).
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  pid_t holder = testing::fork_child([&] {
    ::setpgid(0, 0);
    ::dup2(ready[1], 3);  // the command flock(1) runs says "held" on fd 3 once it holds the lock
    ::execlp("flock", "flock", path.c_str(), "sh", "-c", "echo held >&3; exec 3>&-; exec sleep 30", nullptr);
    return 127;
  });
  ::close(ready[1]);
  char buf[8];
  ASSERT_GT(::read(ready[0], buf, sizeof buf), 0) << "flock(1) did not start";
  ::close(ready[0]);
  auto lock = Lock::try_acquire(path);
  EXPECT_FALSE(lock.has_value()) << "the default backend was granted while flock(1) holds the file";
  ::kill(-holder, SIGKILL);  // flock(1), sh and sleep
  testing::wait_child(holder);
}

// ---- C19: fail closed where the directory cannot be tested ----

TEST(SelectBackend, UnprivilegedUserOnNolocksIsRefusedNotGivenAnUnenforcedLock) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to set up and drop to uid 65534";
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks,allow_other,default_permissions");
  const std::string lock = shared_lock_setup(fs.mount_path());
  const std::string dir = fs.mount_path() + "/d";
  pid_t child = testing::fork_child([&] {
    become_nobody();
    if (::access(lock.c_str(), R_OK | W_OK) != 0) return 91;
    auto v = kernel_lock_verdict(dir, lock);
    if (!v.tested || !v.on_lock_file) return 92;  // measured on the lock file itself
    if (v.flock_excludes || v.ofd_excludes) {
      std::fprintf(stderr, "%s\n", v.reason.c_str());
      return 93;
    }
    try {
      auto c = select_backend(dir, lock);
      std::fprintf(stderr, "picked %s: %s\n", std::string(to_string(c.backend)).c_str(), c.reason.c_str());
      return 94;
    } catch (const Error& e) {
      if (e.exit_code() != exit_code::unavailable) return 95;
    }
    try {
      auto l = Lock::try_acquire(lock);
      return 96;  // granted an unverified (here: unenforced) lock
    } catch (const Error& e) {
      return e.exit_code() == exit_code::unavailable ? 0 : 97;
    }
  });
  EXPECT_EQ(testing::wait_child(child), 0);
}

TEST(SelectBackend, UnprivilegedUserOnEnforcingFuseTestsTheLockFileAndGetsFlock) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to set up and drop to uid 65534";
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("allow_other,default_permissions");
  const std::string lock = shared_lock_setup(fs.mount_path());
  const std::string dir = fs.mount_path() + "/d";
  pid_t child = testing::fork_child([&] {
    become_nobody();
    auto v = kernel_lock_verdict(dir, lock);
    if (!v.tested || !v.on_lock_file || !v.flock_excludes || !v.ofd_excludes) return 92;
    auto c = select_backend(dir, lock);
    if (c.backend != Backend::flock) return 93;
    auto l = Lock::try_acquire(lock);
    if (!l || l->backend() != Backend::flock) return 94;
    return 0;
  });
  EXPECT_EQ(testing::wait_child(child), 0);
}

TEST(SelectBackend, NothingToMeasureIsAnErrorNotAGuess) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to uid 65534";
  TmpfsMount m("size=1m,mode=0755");  // a fresh mount: no verdict stored for it anywhere
  HOLDFAST_SKIP_WITHOUT_TMPFS(m);
  ::chmod(std::filesystem::path(m.path()).parent_path().c_str(), 0755);
  // root-owned and not writable by 65534; a lock file 65534 cannot open at all
  const std::string secret = m.path() + "/secret.lock";
  int fd = ::open(secret.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  pid_t child = testing::fork_child([&] {
    become_nobody();
    auto v = kernel_lock_verdict(m.path(), secret);
    if (v.tested) return 91;
    try {
      select_backend(m.path(), secret);
      return 92;
    } catch (const Error& e) {
      if (e.exit_code() != exit_code::unavailable) return 93;
    }
    // No lock file and none can be created: the error the open would give, not a guess.
    try {
      select_backend(m.path(), m.path() + "/absent.lock");
      return 94;
    } catch (const Error& e) {
      return e.error_number() == EACCES ? 0 : 95;
    }
  });
  EXPECT_EQ(testing::wait_child(child), 0);
}

// ---- verdicts remembered per mount, across processes ----

// Runs kernel_lock_verdict(dir) in a forked child with no in-process memory, as a new process
// would. Returns 0 if answered from the shared store, 1 if it tested, 2+ on failure.
int fresh_process_verdict(const std::string& dir) {
  pid_t child = testing::fork_child([&] {
    probe_internal::forget_process_verdicts();
    auto v = kernel_lock_verdict(dir);
    if (!v.tested || !v.flock_excludes) return 2;
    return v.from_persistent_cache ? 0 : 1;
  });
  return testing::wait_child(child);
}

// Scratch files the check created in `dir` since the watch began.
int lockcheck_creates(int inotify_fd) {
  int n = 0;
  alignas(inotify_event) char buf[4096];
  ssize_t len;
  while ((len = ::read(inotify_fd, buf, sizeof buf)) > 0) {
    for (char* p = buf; p < buf + len;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      if (ev->len > 0 && std::string(ev->name).rfind(".holdfast-lockcheck.", 0) == 0) ++n;
      p += sizeof(inotify_event) + ev->len;
    }
  }
  return n;
}

TEST(VerdictStore, SecondProcessDoesNotRetestAndRemountInvalidates) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount tmpfs";
  TmpfsMount m("size=4m");
  HOLDFAST_SKIP_WITHOUT_TMPFS(m);
  if (!probe_internal::mount_key(m.path())) GTEST_SKIP() << "no unique mount ids (Linux < 6.8)";
  testing::TempDir store;
  ::setenv("HOLDFAST_VERDICT_DIR", (store.path() + "/v").c_str(), 1);
  probe_internal::forget_process_verdicts();

  EXPECT_EQ(fresh_process_verdict(m.path()), 1) << "first process on a new mount must test";
  int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  ASSERT_GE(in, 0);
  ASSERT_GE(::inotify_add_watch(in, m.path().c_str(), IN_CREATE), 0);
  EXPECT_EQ(fresh_process_verdict(m.path()), 0) << "second process re-tested";
  EXPECT_EQ(lockcheck_creates(in), 0) << "second process created a scratch file";

  ASSERT_TRUE(m.remount("size=8m")) << m.why();  // same mount, new options: a different key
  EXPECT_EQ(fresh_process_verdict(m.path()), 1) << "verdict survived a remount";
  EXPECT_EQ(lockcheck_creates(in), 1);
  EXPECT_EQ(fresh_process_verdict(m.path()), 0);
  ::close(in);

  m.mount_again("size=8m");  // unmounted and mounted again, same options: a new mount id
  EXPECT_EQ(fresh_process_verdict(m.path()), 1) << "verdict survived unmount + mount";
  ::unsetenv("HOLDFAST_VERDICT_DIR");
}

// One process, several lookups: its in-process cache starts without a mount-table baseline (a
// process that looks up once never opens /proc/self/mountinfo), so the first remount after the
// first lookup must be noticed as surely as later ones.
TEST(VerdictStore, InProcessCacheNeverOutlivesARemount) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount tmpfs";
  TmpfsMount m("size=4m");
  HOLDFAST_SKIP_WITHOUT_TMPFS(m);
  if (!probe_internal::mount_key(m.path())) GTEST_SKIP() << "no unique mount ids (Linux < 6.8)";
  testing::TempDir store;
  ::setenv("HOLDFAST_VERDICT_DIR", (store.path() + "/v").c_str(), 1);
  probe_internal::forget_process_verdicts();
  int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  ASSERT_GE(in, 0);
  ASSERT_GE(::inotify_add_watch(in, m.path().c_str(), IN_CREATE), 0);

  EXPECT_FALSE(kernel_lock_verdict(m.path()).from_cache) << "a new mount must be tested";
  EXPECT_EQ(lockcheck_creates(in), 1);
  ASSERT_TRUE(m.remount("size=8m")) << m.why();
  EXPECT_FALSE(kernel_lock_verdict(m.path()).from_cache) << "the first lookup's answer survived a remount";
  EXPECT_EQ(lockcheck_creates(in), 1);
  EXPECT_TRUE(kernel_lock_verdict(m.path()).from_cache);
  EXPECT_TRUE(select_backend(m.path()).backend == Backend::flock);
  EXPECT_EQ(lockcheck_creates(in), 0) << "re-tested an unchanged mount";
  ASSERT_TRUE(m.remount("size=16m")) << m.why();
  EXPECT_FALSE(kernel_lock_verdict(m.path()).from_cache) << "a cached answer survived a remount";
  EXPECT_EQ(lockcheck_creates(in), 1);
  ::close(in);
  ::unsetenv("HOLDFAST_VERDICT_DIR");
}

TEST(VerdictStore, NolocksVerdictIsNotReusedForTheNextMount) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  testing::TempDir store;
  ::setenv("HOLDFAST_VERDICT_DIR", (store.path() + "/v").c_str(), 1);
  for (int i = 0; i < 2; ++i) {
    {
      FaultFs fs("nolocks");
      probe_internal::forget_process_verdicts();
      EXPECT_EQ(select_backend(fs.mount_path()).backend, Backend::link);
    }
    FaultFs fs("");  // often the same st_dev and mount point type: must be measured afresh
    probe_internal::forget_process_verdicts();
    EXPECT_EQ(select_backend(fs.mount_path()).backend, Backend::flock);
  }
  ::unsetenv("HOLDFAST_VERDICT_DIR");
}

// A verdict only this user or root could have written is believed; anything else is ignored.
TEST(VerdictStore, ForgedVerdictCannotMakeAutomaticPickAnUnenforcedLock) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown the store";
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks");
  auto key = probe_internal::mount_key(fs.mount_path());
  if (!key) GTEST_SKIP() << "no unique mount ids (Linux < 6.8)";
  testing::TempDir store;
  const std::string dir = store.path() + "/v";
  ::setenv("HOLDFAST_VERDICT_DIR", dir.c_str(), 1);
  probe_internal::StoredVerdicts forged;
  forged.ofd_excludes = true;
  forged.flock_excludes = true;
  forged.filesystem = "forged";
  probe_internal::store_verdicts(*key, forged);  // well-formed, for exactly this mount
  std::string file;
  for (const auto& e : std::filesystem::directory_iterator(dir)) file = e.path();
  ASSERT_FALSE(file.empty());

  auto pick = [&] {
    probe_internal::forget_process_verdicts();
    return select_backend(fs.mount_path()).backend;
  };
  // Written by another user (the file, or the directory it sits in): ignored, measured afresh.
  ASSERT_EQ(::chown(file.c_str(), kNobody, kNobody), 0);
  EXPECT_EQ(pick(), Backend::link) << "believed a verdict file owned by another user";
  ASSERT_EQ(::chown(file.c_str(), 0, 0), 0);
  ASSERT_EQ(::chmod(file.c_str(), 0666), 0);
  EXPECT_EQ(pick(), Backend::link) << "believed a world-writable verdict file";
  // (the fresh measurement rewrote the entry; forge it again for the directory cases)
  probe_internal::store_verdicts(*key, forged);
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  EXPECT_EQ(pick(), Backend::link) << "believed a verdict in a world-writable directory";
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  probe_internal::store_verdicts(*key, forged);
  ASSERT_EQ(::chown(dir.c_str(), kNobody, kNobody), 0);
  EXPECT_EQ(pick(), Backend::link) << "believed a verdict in another user's directory";
  // Control: the same forged bytes in a store only root can write ARE believed, so the refusals
  // above come from the trust checks, not from a malformed file.
  ASSERT_EQ(::chown(dir.c_str(), 0, 0), 0);
  probe_internal::store_verdicts(*key, forged);
  EXPECT_EQ(pick(), Backend::flock);
  ::unsetenv("HOLDFAST_VERDICT_DIR");
}

// ---- explicit backends this filesystem is known to break ----

TEST(ExplicitBackend, UnenforcedKernelLockIsRefusedUnlessOverridden) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks");
  for (Backend b : {Backend::flock, Backend::ofd}) {
    LockOptions o;
    o.backend = b;
    try {
      auto l = Lock::try_acquire(fs / "x.lock", o);
      ADD_FAILURE() << to_string(b) << " granted where it is not enforced";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), exit_code::unavailable) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line";
    }
    o.allow_unsafe_backend = true;
    auto l = Lock::try_acquire(fs / "x.lock", o);
    EXPECT_TRUE(l.has_value()) << "the override must take it anyway";
  }
  auto r = testing::run({HOLDFAST_CLI_PATH, "lock", "--backend", "flock", fs / "y.lock", "--", "true"});
  EXPECT_EQ(r.exit_code, 69) << r.err;
  EXPECT_NE(r.err.find("not enforced"), std::string::npos) << r.err;
}

TEST(ExplicitBackend, ExclIsRefusedWhereProbeMeasuredCreatesNonAtomic) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nonatomic_create");
  if (!probe_internal::mount_key(fs.mount_path())) GTEST_SKIP() << "no unique mount ids (Linux < 6.8)";
  LockOptions o;
  o.backend = Backend::excl;
  {  // not measured yet: the explicit choice stands
    auto l = Lock::try_acquire(fs / "a.lock", o);
    EXPECT_TRUE(l.has_value());
  }
  ProbeOptions po;
  po.directory = fs.mount_path();
  po.workers = 8;
  po.rounds = 20;
  po.primitives = {Primitive::excl, Primitive::rename, Primitive::link};
  auto report = probe(po);
  ASSERT_EQ(report.find(Primitive::excl)->verdict, Verdict::unsafe);
  EXPECT_EQ(stored_probe_verdict(fs.mount_path(), Primitive::excl), Verdict::unsafe);
  try {
    auto l = Lock::try_acquire(fs / "b.lock", o);
    ADD_FAILURE() << "excl granted where probe measured creates non-atomic";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::unavailable) << e.what();
    EXPECT_NE(std::string(e.what()).find("not atomic"), std::string::npos) << e.what();
  }
  o.backend = Backend::link;  // link stays atomic there, and probe said so
  EXPECT_NO_THROW({ auto l = Lock::try_acquire(fs / "c.lock", o); });
}

}  // namespace
}  // namespace holdfast
