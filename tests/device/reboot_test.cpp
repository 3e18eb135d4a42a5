// device reboot: Ctrl-D through the guard. With a write to the drive still in the host's page
// cache, the reboot waits until the board can read it (or, with --force, goes out with a warning).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

namespace dx = holdfast::device::exit_code;
using holdfast::device::detail::sha256_hex;

class RebootTest : public ::testing::Test {
 protected:
  TempDir dir;
  ScopedEnv lockdir{"HOLDFAST_UUCP_LOCK_DIR", dir.path()};

  // The "run" events of the board (the board logs them from its own thread).
  std::vector<nlohmann::json> runs(size_t n) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      std::vector<nlohmann::json> out;
      for (const auto& e : board_events(dir / "log")) {
        if (e["event"] == "run") out.push_back(e);
      }
      if (out.size() >= n || std::chrono::steady_clock::now() > deadline) return out;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
};

TEST_F(RebootTest, WaitsForAPendingWriteThenRebootsIntoIt) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log"});
  const std::string fresh = "print('new, saved by an editor that does not fsync')\n";
  spit(drive.mount() + "/code.py", fresh);
  if (drive.board_read("/code.py") == fresh) GTEST_SKIP() << "the kernel wrote back before the board looked";
  auto r = hf({"device", "reboot", "--port", board.port(), "--drive", drive.mount(), "--journal", dir / "journal"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("Ctrl-D held"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("code.py"), std::string::npos) << r.err;
  auto ran = runs(1);
  ASSERT_EQ(ran.size(), 1U);
  EXPECT_EQ(ran[0]["sha256"], sha256_hex(fresh)) << "the board rebooted into the old code";
}

// --force skips the guard: the board reboots into whatever it can read (here: the old code).
TEST_F(RebootTest, ForceSendsCtrlDAtOnceWithAWarning) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log"});
  const std::string fresh = "print('new')\n";
  spit(drive.mount() + "/code.py", fresh);
  if (drive.board_read("/code.py") == fresh) GTEST_SKIP() << "the kernel wrote back before the board looked";
  auto r = hf({"device", "reboot", "--port", board.port(), "--drive", drive.mount(), "--journal", dir / "journal",
               "--force"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: --force"), std::string::npos) << r.err;
  auto ran = runs(1);  // (a later writeback may auto-reload the board: only the first run counts)
  ASSERT_GE(ran.size(), 1U);
  if (ran[0]["sha256"] == sha256_hex(fresh)) GTEST_SKIP() << "the kernel wrote back before the reboot";
  EXPECT_EQ(ran[0]["sha256"], sha256_hex("print('old')\n"));
}

// Nothing pending: no notice, the reboot goes out at once, interrupting a running program first,
// and the board is seen to start main.py.
TEST_F(RebootTest, WithNothingPendingRebootsAtOnce) {
  std::string fs = dir / "fs";
  ::mkdir(fs.c_str(), 0755);
  spit(fs + "/main.py", "print('main')\n");
  SimBoard board({"--fs-dir", fs, "--log", dir / "log", "--program", "import time\nwhile True:\n    time.sleep(0.01)\n"});
  auto r = hf({"device", "reboot", "--port", board.port()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("held"), std::string::npos) << r.err;
  auto ran = runs(2);  // the program running at start, then main.py after the reboot
  ASSERT_EQ(ran.size(), 2U);
  EXPECT_EQ(ran[1]["sha256"], sha256_hex("print('main')\n"));
}

TEST_F(RebootTest, RebootNotSeenIsExit84) {
  std::string fs = dir / "fs";
  ::mkdir(fs.c_str(), 0755);
  SimBoard board({"--fs-dir", fs, "--log", dir / "log", "--mute-reboot"});
  auto r = hf({"device", "reboot", "--port", board.port(), "--timeout", "500ms"});
  EXPECT_EQ(r.exit_code, dx::reboot_not_seen) << r.err;
}

}  // namespace
}  // namespace holdfast::testing::device
