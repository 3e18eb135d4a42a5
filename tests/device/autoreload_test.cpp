// CircuitPython auto-reload in the simulator: a host write that reaches the drive while code.py
// runs (or has finished) restarts it. deploy enters the raw REPL before writing, which suspends
// auto-reload, so its verified reboot is the only restart and the new code runs exactly once.
#include <gtest/gtest.h>

#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::detail::sha256_hex;

class AutoReloadTest : public ::testing::Test {
 protected:
  TempDir dir;
  ScopedEnv lockdir{"HOLDFAST_UUCP_LOCK_DIR", dir.path()};

  std::vector<nlohmann::json> events(const std::string& kind, size_t at_least) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      std::vector<nlohmann::json> out;
      for (const auto& e : board_events(dir / "log")) {
        if (e["event"] == kind) out.push_back(e);
      }
      if (out.size() >= at_least || std::chrono::steady_clock::now() > deadline) return out;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
};

TEST_F(AutoReloadTest, AHostWriteReachingTheDriveRestartsCodePy) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log", "--boot-code"});
  ASSERT_EQ(events("ran", 1).size(), 1U);
  const std::string fresh = "print('new')\n";
  spit(drive.mount() + "/code.py", fresh);
  ::sync();  // the write reaches the drive, as the kernel's writeback eventually does
  auto runs = events("run", 2);
  ASSERT_EQ(runs.size(), 2U) << "a write to the drive while code.py ran did not restart it";
  EXPECT_EQ(runs[0]["sha256"], sha256_hex("print('old')\n"));
  EXPECT_EQ(runs[1]["sha256"], sha256_hex(fresh));
  EXPECT_GE(events("autoreload", 1).size(), 1U);
}

// deploy interrupts code.py and enters the raw REPL before it writes, so the write does not
// restart the board: the only restart is deploy's verified reboot, and the new code runs once.
TEST_F(AutoReloadTest, DeployRunsTheNewCodeExactlyOnce) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log", "--boot-code"});
  ASSERT_EQ(events("ran", 1).size(), 1U);
  const std::string fresh = "print('deployed')\n";
  spit(dir / "code.py", fresh);
  auto r = hf({"device", "deploy", "--port", board.port(), "--drive", drive.mount(), dir / "code.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ran = events("ran", 2);
  ASSERT_EQ(ran.size(), 2U);
  // The board finished the new code; a reload triggered by the write would have restarted it.
  auto runs = events("run", 2);
  ASSERT_EQ(runs.size(), 2U);
  EXPECT_EQ(runs[0]["sha256"], sha256_hex("print('old')\n"));
  EXPECT_EQ(runs[1]["sha256"], sha256_hex(fresh));
  EXPECT_EQ(ran[1]["ok"], true) << ran[1]["error"];
  EXPECT_TRUE(events("autoreload", 0).empty()) << "deploy's write auto-reloaded the board";
}

}  // namespace
}  // namespace holdfast::testing::device
