// holdfast probe when things go wrong: a full filesystem is "inconclusive" with a report, not
// UNSAFE and not a bare error (review P1); an interrupted probe leaves nothing behind (P2); and
// a lock kind that breaks what ensure relies on is UNSAFE (S3).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

// Fills the inode table of the small filesystem mounted at `mount`, then frees exactly `free`
// inodes. Returns the free count after.
long leave_free_inodes(const std::string& mount, int free) {
  const std::string fill = mount + "/fill";
  if (::mkdir(fill.c_str(), 0755) != 0) return -1;
  int n = 0;
  for (;; ++n) {
    int fd = ::open((fill + "/" + std::to_string(n)).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) break;
    ::close(fd);
  }
  for (int i = 0; i < free && n - 1 - i >= 0; ++i) ::unlink((fill + "/" + std::to_string(n - 1 - i)).c_str());
  struct statvfs sv{};
  ::statvfs(mount.c_str(), &sv);
  return static_cast<long>(sv.f_ffree);
}

nlohmann::json probe_json(const std::string& dir, const std::string& prims, int workers, int rounds, int& exit_code,
                          std::string& err) {
  auto r = testing::run({HOLDFAST_CLI_PATH, "probe", dir, "--json", "--workers", std::to_string(workers), "--rounds",
                         std::to_string(rounds), "--primitive", prims});
  exit_code = r.exit_code;
  err = r.err;
  return nlohmann::json::parse(r.out, nullptr, false);
}

// ---- P1 ----

TEST(ProbeFull, ItsOwnRoundsDoNotFillASmallFilesystem) {
  testing::TmpfsMount fs("size=4m,nr_inodes=64");
  HOLDFAST_SKIP_WITHOUT_TMPFS(fs);
  ProbeOptions o;
  o.directory = fs.path();
  o.workers = 8;
  o.rounds = 150;  // 150 rounds of leftovers alone would be more than 64 inodes
  auto r = probe(o);
  for (const auto& p : r.results) {
    EXPECT_EQ(p.verdict, Verdict::safe) << to_string(p.primitive) << ": " << p.reason;
    EXPECT_EQ(p.rounds, 150) << to_string(p.primitive);
  }
  EXPECT_TRUE(std::filesystem::is_empty(fs.path()));
}

TEST(ProbeFull, AFullFilesystemIsInconclusiveWithAReportNotUnsafe) {
  testing::TmpfsMount fs("size=4m,nr_inodes=64");
  HOLDFAST_SKIP_WITHOUT_TMPFS(fs);
  // Room for the scratch tree and one name at a time, not for link's eight temp files.
  ASSERT_EQ(leave_free_inodes(fs.path(), 4), 4);
  int rc = 0;
  std::string err;
  auto j = probe_json(fs.path(), "mkdir,link,ofd", 8, 30, rc, err);
  ASSERT_FALSE(j.is_discarded()) << "no report: " << err;
  EXPECT_EQ(rc, 74) << err;
  ASSERT_EQ(j["primitives"].size(), 3u);
  for (const auto& p : j["primitives"]) {
    EXPECT_NE(p["verdict"], "unsafe") << p.dump();
    if (p["primitive"] == "link") {
      EXPECT_EQ(p["verdict"], "inconclusive") << p.dump();
      EXPECT_NE(p["first_error"].get<std::string>().find("No space left"), std::string::npos) << p.dump();
    } else {
      EXPECT_EQ(p["verdict"], "safe") << p.dump();  // measured, and reported, despite link's failure
    }
  }
  EXPECT_NE(j["automatic"]["safe"], false);
}

TEST(ProbeFull, SetupFailuresStillReportEveryPrimitive) {
  testing::TmpfsMount fs("size=4m,nr_inodes=64");
  HOLDFAST_SKIP_WITHOUT_TMPFS(fs);
  ASSERT_EQ(leave_free_inodes(fs.path(), 1), 1);  // the scratch directory, and nothing else
  int rc = 0;
  std::string err;
  auto j = probe_json(fs.path(), "ofd,mkdir", 4, 10, rc, err);
  ASSERT_FALSE(j.is_discarded()) << "no report: " << err;
  EXPECT_EQ(rc, 74) << err;
  ASSERT_EQ(j["primitives"].size(), 2u);
  for (const auto& p : j["primitives"]) {
    EXPECT_EQ(p["verdict"], "inconclusive") << p.dump();
    EXPECT_EQ(p["rounds"], 0) << p.dump();
  }
  EXPECT_TRUE(std::filesystem::exists(fs.path() + "/fill"));
  int left = 0;
  for (const auto& e : std::filesystem::directory_iterator(fs.path())) left += e.path().filename() != "fill";
  EXPECT_EQ(left, 0) << "scratch left behind";
}

TEST(ProbeFull, ResourceErrnosAreInconclusive) {
  for (int err : {ENOSPC, EDQUOT, EMFILE, ENFILE, ENOMEM, EROFS, EIO}) {
    EXPECT_TRUE(probe_internal::is_resource_errno(err)) << std::strerror(err);
  }
  for (int err : {EEXIST, EINVAL, EACCES, ESTALE}) EXPECT_FALSE(probe_internal::is_resource_errno(err));
}

// ---- P2 ----

class ProbeInterrupted : public ::testing::TestWithParam<int> {};

TEST_P(ProbeInterrupted, RemovesItsScratchTreeAndDiesOfTheSignal) {
  const int sig = GetParam();
  testing::TempDir dir("/dev/shm");
  pid_t pid = testing::fork_child([&] {
    for (int s : {SIGINT, SIGTERM, SIGHUP}) ::signal(s, SIG_DFL);  // the runner may ignore some
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    ::dup2(null, 1);
    ::execl(HOLDFAST_CLI_PATH, "holdfast", "probe", dir.path().c_str(), "--workers", "4", "--rounds", "10000000",
            "--primitive", "link", static_cast<char*>(nullptr));
    return 127;
  });
  // Wait until rounds are running: the scratch tree holds link's directory and temp files.
  bool running = false;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
       !running && std::chrono::steady_clock::now() < deadline;) {
    std::error_code ec;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path(), ec)) {
      if (e.path().filename().string().rfind("t", 0) == 0 && e.path().parent_path().filename() == "link") running = true;
    }
    if (!running) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(running) << "probe never started its rounds";
  ASSERT_EQ(::kill(pid, sig), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "status " << status;
  std::error_code ec;
  int left = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path(), ec)) {
    ++left;
    ADD_FAILURE() << "left behind: " << e.path();
    if (left > 5) break;
  }
  EXPECT_EQ(left, 0);
}

INSTANTIATE_TEST_SUITE_P(Signals, ProbeInterrupted, ::testing::Values(SIGTERM, SIGINT, SIGHUP),
                         [](const auto& info) { return std::string(::sigabbrev_np(info.param)); });

// ---- S3 ----

TEST(ProbeSemantics, LocksThatEnsureCannotHandOverAreUnsafe) {
  LockSemantics good;
  good.excludes_other_process = true;
  good.excludes_same_process = true;
  good.closing_other_fd_drops = false;
  good.inherited_by_child = true;
  good.survives_exec = true;
  for (Primitive p : {Primitive::ofd, Primitive::flock}) {
    EXPECT_EQ(probe_internal::semantics_problem(p, good), "") << to_string(p);
    auto s = good;
    s.closing_other_fd_drops = true;
    EXPECT_NE(probe_internal::semantics_problem(p, s), "") << to_string(p) << ": closing another fd dropped it";
    s = good;
    s.inherited_by_child = false;
    EXPECT_NE(probe_internal::semantics_problem(p, s), "") << to_string(p) << ": lost across fork";
    s = good;
    s.survives_exec = false;
    EXPECT_NE(probe_internal::semantics_problem(p, s), "") << to_string(p) << ": lost across exec";
    s = good;
    s.excludes_same_process = false;
    EXPECT_NE(probe_internal::semantics_problem(p, s), "") << to_string(p);
  }
  // POSIX: process-owned by design, its traps are reported but are not a verdict.
  LockSemantics posix{true, false, true, false, false};
  EXPECT_EQ(probe_internal::semantics_problem(Primitive::posix, posix), "");
  posix.excludes_other_process = false;
  EXPECT_NE(probe_internal::semantics_problem(Primitive::posix, posix), "");
}

TEST(ProbeSemantics, ExecInheritanceIsMeasured) {
  testing::TempDir dir("/dev/shm");
  ProbeOptions o;
  o.directory = dir.path();
  o.workers = 2;
  o.rounds = 2;
  o.primitives = {Primitive::ofd, Primitive::flock, Primitive::posix};
  auto r = probe(o);
  EXPECT_EQ(r.find(Primitive::ofd)->semantics->survives_exec, true);
  EXPECT_EQ(r.find(Primitive::flock)->semantics->survives_exec, true);
  EXPECT_EQ(r.find(Primitive::posix)->semantics->survives_exec, false) << "POSIX locks belong to the parent";
  for (const auto& p : r.results) EXPECT_EQ(p.verdict, Verdict::safe) << p.reason;
}

}  // namespace
}  // namespace holdfast
