// holdfast probe --ensure (src/probe/ensure_race.cpp): starts are counted exactly and only verified
// processes are killed (review S1), on the probe's own harness.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "probe/internal.hpp"
#include "sys/file.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

// Processes whose environment carries a HOLDFAST_PROBE_STARTS marker (left-over starts).
int marked_processes() {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    auto env = sys::read_file("/proc/" + name + "/environ", 1 << 20);
    if (env && env->find("HOLDFAST_PROBE_STARTS=") != std::string::npos) ++n;
  }
  return n;
}

TEST(EnsureRace, RecordedPidOfAnUnrelatedProcessIsCountedButNeverKilled) {
  testing::TempDir dir;
  const std::string starts = dir / "starts";
  // A start that exited and whose pid now belongs to someone else: here, an unrelated sleep.
  pid_t unrelated = testing::fork_child([] {
    ::execlp("sleep", "sleep", "30", static_cast<char*>(nullptr));
    return 127;
  });
  // A real start of this round, recorded and still running (it carries the marker).
  const std::string marker = "HOLDFAST_PROBE_STARTS=" + starts;
  pid_t ours = testing::fork_child([&] {
    ::putenv(const_cast<char*>(marker.c_str()));
    ::execlp("sleep", "sleep", "30", static_cast<char*>(nullptr));
    return 127;
  });
  // Wait until `ours` has exec'd (its /proc environ shows the marker): real state, no sleep.
  for (int i = 0; i < 5000; ++i) {
    auto env = sys::read_file("/proc/" + std::to_string(ours) + "/environ", 1 << 20);
    if (env && env->find(marker) != std::string::npos) break;
    ::usleep(1000);
  }
  std::ofstream(starts) << unrelated << "\n" << ours << "\n";
  EXPECT_EQ(probe_internal::count_and_kill_starts(starts, {}), 2);
  int status = 0;
  EXPECT_EQ(::waitpid(ours, &status, 0), ours);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the verified start was not killed";
  EXPECT_EQ(::waitpid(unrelated, &status, WNOHANG), 0) << "an unrelated process named in the file was signalled";
  ::kill(unrelated, SIGKILL);
  testing::wait_child(unrelated);
}

TEST(EnsureRace, CliRunsExactlyOneAndLeavesNothingRunning) {
  auto r = testing::run({HOLDFAST_CLI_PATH, "probe", "--ensure", "--workers", "4", "--rounds", "2", "--json", "--",
                         "sleep", "1000"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["exactly_one"].get<bool>());
  for (int n : j["holdfast"]["instances_per_round"]) EXPECT_EQ(n, 1);
  for (int n : j["naive"]["instances_per_round"]) EXPECT_GE(n, 1);
  EXPECT_EQ(marked_processes(), 0) << "probe --ensure left processes running";
}

}  // namespace
}  // namespace holdfast
