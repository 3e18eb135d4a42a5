// CircuitPython auto-reload in the simulator: a host write that reaches the drive while code.py
// runs (or has finished) restarts it. deploy enters the raw REPL before writing, which suspends
// auto-reload, so its verified reboot is the only restart and the new code runs exactly once.
#include <gtest/gtest.h>


#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::detail::sha256_hex;

class AutoReloadTest : public BoardTest {};

TEST_F(AutoReloadTest, AHostWriteReachingTheDriveRestartsCodePy) {
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log(), "--boot-code"});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  ASSERT_EQ(events("ran", 1).size(), 1U);
  const std::string fresh = "print('new')\n";
  spit(cp.drive().mount() + "/code.py", fresh);
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
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log(), "--boot-code"});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  ASSERT_EQ(events("ran", 1).size(), 1U);
  const std::string fresh = "print('deployed')\n";
  spit(dir / "code.py", fresh);
  auto r = hf({"device", "deploy", "--port", cp.board().port(), "--drive", cp.drive().mount(), dir / "code.py"});
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
