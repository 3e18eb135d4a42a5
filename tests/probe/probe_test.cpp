// holdfast::probe on real filesystems (tmpfs, ext4) and on faultfs, which lies on purpose.
#include <gtest/gtest.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "support/faultfs.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::FaultFs;

bool soak() {
  const char* s = std::getenv("HOLDFAST_SOAK");
  return s != nullptr && std::string(s) == "1";
}

ProbeReport run_probe(const std::string& dir, int rounds, int workers = 20,
                      std::vector<Primitive> prims = {}) {
  ProbeOptions o;
  o.directory = dir;
  o.rounds = soak() ? rounds * 20 : rounds;
  o.workers = workers;
  o.primitives = std::move(prims);
  return probe(o);
}

void expect_all_safe(const ProbeReport& r) {
  ASSERT_EQ(r.results.size(), all_primitives().size());
  for (const auto& p : r.results) {
    EXPECT_EQ(p.verdict, Verdict::safe) << to_string(p.primitive) << ": " << p.reason;
    EXPECT_EQ(p.double_grants, 0) << to_string(p.primitive);
    EXPECT_EQ(p.errors, 0) << to_string(p.primitive) << ": " << p.first_error;
    EXPECT_EQ(p.rounds, r.rounds) << to_string(p.primitive);
    EXPECT_EQ(p.max_winners, 1) << to_string(p.primitive);
  }
  EXPECT_EQ(r.automatic_safe, std::optional<bool>(true)) << r.automatic_reason;
  EXPECT_EQ(r.recommended, std::optional<Backend>(Backend::flock));
}

void expect_lock_semantics(const ProbeReport& r) {
  const auto* ofd = r.find(Primitive::ofd);
  const auto* posix = r.find(Primitive::posix);
  const auto* fl = r.find(Primitive::flock);
  ASSERT_TRUE(ofd && posix && fl && ofd->semantics && posix->semantics && fl->semantics);
  EXPECT_EQ(ofd->semantics->excludes_other_process, true);
  EXPECT_EQ(ofd->semantics->excludes_same_process, true) << "OFD: two opens in one process exclude";
  EXPECT_EQ(ofd->semantics->closing_other_fd_drops, false);
  EXPECT_EQ(ofd->semantics->inherited_by_child, true);
  EXPECT_EQ(posix->semantics->excludes_other_process, true);
  EXPECT_EQ(posix->semantics->excludes_same_process, false) << "POSIX locks belong to the process";
  EXPECT_EQ(posix->semantics->closing_other_fd_drops, true) << "the classic POSIX trap";
  EXPECT_EQ(posix->semantics->inherited_by_child, false);
  EXPECT_EQ(posix->semantics->survives_exec, false);
  EXPECT_EQ(ofd->semantics->survives_exec, true);
  EXPECT_EQ(fl->semantics->survives_exec, true);
  EXPECT_EQ(fl->semantics->closing_other_fd_drops, false);
  EXPECT_EQ(fl->semantics->excludes_same_process, true);
  EXPECT_EQ(fl->semantics->inherited_by_child, true);
}

TEST(Probe, TmpfsIsSafeForEveryPrimitive) {
  struct statfs s{};
  ASSERT_EQ(::statfs("/dev/shm", &s), 0);
  if (s.f_type != 0x01021994) GTEST_SKIP() << "/dev/shm is not tmpfs here";
  testing::TempDir dir("/dev/shm");
  auto r = run_probe(dir.path(), 200);
  EXPECT_EQ(r.filesystem.type, "tmpfs");
  EXPECT_EQ(r.filesystem.mount_type, "tmpfs");
  expect_all_safe(r);
  expect_lock_semantics(r);
}

TEST(Probe, Ext4IsSafeForEveryPrimitive) {
  std::string where;
  for (const char* candidate : {"/var/tmp", "/tmp", HOLDFAST_BINARY_DIR}) {
    struct statfs s{};
    if (::statfs(candidate, &s) == 0 && s.f_type == 0xEF53) {
      where = candidate;
      break;
    }
  }
  if (where.empty()) GTEST_SKIP() << "no ext4 directory found (tried /var/tmp, /tmp, the build dir)";
  testing::TempDir dir(where);
  auto r = run_probe(dir.path(), 200);
  EXPECT_EQ(r.filesystem.type, "ext4");
  EXPECT_FALSE(r.filesystem.options.empty());
  expect_all_safe(r);
  expect_lock_semantics(r);
}

TEST(Probe, RejectsBadOptionsAndMissingDirectory) {
  ProbeOptions o;
  o.directory = "/nonexistent/holdfast";
  EXPECT_THROW(probe(o), Error);
  o.directory = "/dev/shm";
  o.workers = 1;
  EXPECT_THROW(probe(o), Error);
}

TEST(Probe, LeavesNoScratchBehind) {
  testing::TempDir dir;
  run_probe(dir.path(), 5, 4);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}


TEST(ProbeFaultFs, FindsDoubleGrantsWithNonatomicCreate) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nonatomic_create");
  auto r = run_probe(fs.mount_path(), 20, 8,
                     {Primitive::mkdir, Primitive::excl, Primitive::link, Primitive::rename, Primitive::ofd});
  EXPECT_EQ(r.filesystem.mount_type, "fuse.faultfs");
  for (Primitive p : {Primitive::mkdir, Primitive::excl, Primitive::rename}) {
    const auto* res = r.find(p);
    ASSERT_NE(res, nullptr);
    EXPECT_EQ(res->verdict, Verdict::unsafe) << to_string(p) << ": " << res->reason;
    EXPECT_GT(res->double_grants, 0) << to_string(p);
  }
  // link(2) stays atomic there, and kernel locks still work (flock was not probed here: ofd).
  EXPECT_EQ(r.find(Primitive::link)->verdict, Verdict::safe) << r.find(Primitive::link)->reason;
  EXPECT_EQ(r.find(Primitive::link)->double_grants, 0);
  EXPECT_EQ(r.find(Primitive::ofd)->verdict, Verdict::safe);
  EXPECT_EQ(r.recommended, std::optional<Backend>(Backend::ofd));
}

TEST(ProbeFaultFs, ReportsKernelLocksUnsafeWithNolocks) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks");
  auto r = run_probe(fs.mount_path(), 30, 8, {Primitive::link, Primitive::flock, Primitive::ofd, Primitive::posix});
  for (Primitive p : {Primitive::flock, Primitive::ofd, Primitive::posix}) {
    const auto* res = r.find(p);
    ASSERT_NE(res, nullptr);
    EXPECT_EQ(res->verdict, Verdict::unsafe) << to_string(p);
    EXPECT_GT(res->double_grants, 0) << to_string(p);
    ASSERT_TRUE(res->semantics);
    EXPECT_EQ(res->semantics->excludes_other_process, false) << to_string(p);
  }
  EXPECT_EQ(r.find(Primitive::link)->verdict, Verdict::safe);
  EXPECT_EQ(r.recommended, std::optional<Backend>(Backend::link));
  // Whatever automatic picks here must not be a kernel lock the probe just showed unenforced.
  EXPECT_NE(r.automatic_safe, std::optional<bool>(false)) << to_string(r.automatic_backend) << ": "
                                                          << r.automatic_reason;
}

TEST(KernelLockVerdict, EnforcedOnTmpfsAndCached) {
  testing::TempDir dir("/dev/shm");
  auto v = kernel_lock_verdict(dir.path());
  EXPECT_TRUE(v.tested) << v.reason;
  EXPECT_TRUE(v.ofd_excludes) << v.reason;
  EXPECT_TRUE(v.flock_excludes) << v.reason;
  auto again = kernel_lock_verdict(dir.path());
  EXPECT_TRUE(again.from_cache);
  EXPECT_TRUE(again.ofd_excludes);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "scratch file left behind";
}

TEST(KernelLockVerdict, UntestableDirectoryIsNotTested) {
  auto v = kernel_lock_verdict("/nonexistent/holdfast");
  EXPECT_FALSE(v.tested);
  EXPECT_FALSE(v.reason.empty());
}

TEST(KernelLockVerdict, NolocksIsCaughtAndNotCachedAcrossMounts) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  for (int i = 0; i < 2; ++i) {
    {
      FaultFs fs("nolocks");
      auto v = kernel_lock_verdict(fs.mount_path());
      EXPECT_TRUE(v.tested) << v.reason;
      EXPECT_FALSE(v.ofd_excludes) << v.reason;
      EXPECT_FALSE(v.flock_excludes) << v.reason;
    }
    {
      // Likely the same anonymous st_dev as the mount above: the cache must not answer for it.
      FaultFs fs("");
      auto v = kernel_lock_verdict(fs.mount_path());
      EXPECT_TRUE(v.ofd_excludes) << v.reason << (v.from_cache ? " (from cache)" : "");
      EXPECT_TRUE(v.flock_excludes) << v.reason;
    }
  }
}

// ---- the command ----

TEST(ProbeCli, JsonReportOnTmpfs) {
  testing::TempDir dir("/dev/shm");
  auto r = testing::run({HOLDFAST_CLI_PATH, "probe", dir.path(), "--rounds", "20", "--workers", "6", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["filesystem"]["type"], "tmpfs");
  ASSERT_EQ(j["primitives"].size(), 7u);
  for (const auto& p : j["primitives"]) {
    EXPECT_EQ(p["verdict"], "safe") << p.dump();
    EXPECT_EQ(p["double_grants"], 0);
    EXPECT_EQ(p["rounds"], 20);
  }
  EXPECT_EQ(j["automatic"]["safe"], true);
}

TEST(ProbeCli, TableAndPrimitiveFilter) {
  testing::TempDir dir("/dev/shm");
  auto r = testing::run({HOLDFAST_CLI_PATH, "probe", dir.path(), "--rounds", "10", "--workers", "4",
                         "--primitive", "mkdir,ofd"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("mkdir"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ofd"), std::string::npos);
  EXPECT_EQ(r.out.find("rename"), std::string::npos);
  EXPECT_EQ(r.err, "") << "no progress line when stderr is not a TTY";
}

TEST(ProbeCli, UsageErrors) {
  EXPECT_EQ(testing::run({HOLDFAST_CLI_PATH, "probe", "/dev/shm", "--primitive", "bogus"}).exit_code, 64);
  EXPECT_EQ(testing::run({HOLDFAST_CLI_PATH, "probe", "/dev/shm", "--workers", "1"}).exit_code, 64);
  EXPECT_EQ(testing::run({HOLDFAST_CLI_PATH, "probe", "/nonexistent/holdfast"}).exit_code, 66);
}

TEST(ProbeCli, NolocksFaultFsExitStatusFollowsAutomatic) {
  HOLDFAST_SKIP_WITHOUT_FUSE();
  FaultFs fs("nolocks");
  auto r = testing::run({HOLDFAST_CLI_PATH, "probe", fs.mount_path(), "--rounds", "10", "--workers", "4", "--json"});
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
  // Exit 69 exactly when the backend automatic would pick is unsafe here.
  EXPECT_EQ(r.exit_code, j["automatic"]["safe"] == false ? 69 : 0) << r.out;
  for (const auto& p : j["primitives"]) {
    if (p["primitive"] == "ofd" || p["primitive"] == "flock") EXPECT_EQ(p["verdict"], "unsafe");
  }
}

}  // namespace
}  // namespace holdfast
