// device reboot: Ctrl-D through the guard. With a write to the drive still in the host's page
// cache, the reboot waits until the board can read it (or, with --force, goes out with a warning).
#include <gtest/gtest.h>
#include <sys/stat.h>


#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

namespace dx = holdfast::device::exit_code;
using holdfast::device::detail::sha256_hex;

class RebootTest : public BoardTest {};

TEST_F(RebootTest, WaitsForAPendingWriteThenRebootsIntoIt) {
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log()});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  const std::string fresh = "print('new, saved by an editor that does not fsync')\n";
  if (!cp.save_unflushed(fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  auto r = hf({"device", "reboot", "--port", cp.board().port(), "--drive", cp.drive().mount(), "--journal",
               dir / "journal"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ran = events("run", 1);
  ASSERT_EQ(ran.size(), 1U);
  EXPECT_EQ(ran[0]["sha256"], sha256_hex(fresh)) << "the board rebooted into the old code";
  // A sync(2) by a concurrent test can land the write between save_unflushed() and the reboot's
  // look: then nothing was pending (and the board, checked above, read the new code anyway).
  if (r.err.find("not on the board yet") == std::string::npos) GTEST_SKIP() << "written back before the reboot looked";
  EXPECT_NE(r.err.find("Ctrl-D held"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("code.py"), std::string::npos) << r.err;
}

// --force skips the guard: the board reboots into whatever it can read (here: the old code).
TEST_F(RebootTest, ForceSendsCtrlDAtOnceWithAWarning) {
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log()});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  const std::string fresh = "print('new')\n";
  if (!cp.save_unflushed(fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  auto r = hf({"device", "reboot", "--port", cp.board().port(), "--drive", cp.drive().mount(), "--journal",
               dir / "journal", "--force"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ran = events("run", 1);  // (a later writeback may auto-reload the board: only the first run counts)
  ASSERT_GE(ran.size(), 1U);
  // A sync(2) by a concurrent test can land the write first: then there was nothing to warn about.
  if (ran[0]["sha256"] == sha256_hex(fresh)) GTEST_SKIP() << "the kernel wrote back before the reboot";
  EXPECT_NE(r.err.find("warning: --force"), std::string::npos) << r.err;
  EXPECT_EQ(ran[0]["sha256"], sha256_hex("print('old')\n"));
}

// Nothing pending: no notice, the reboot goes out at once, interrupting a running program first,
// and the board is seen to start main.py.
TEST_F(RebootTest, WithNothingPendingRebootsAtOnce) {
  spit(fs() + "/main.py", "print('main')\n");
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--program", "import time\nwhile True:\n    time.sleep(0.01)\n"});
  auto r = hf({"device", "reboot", "--port", board.port()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("held"), std::string::npos) << r.err;
  auto ran = events("run", 2);  // the program running at start, then main.py after the reboot
  ASSERT_EQ(ran.size(), 2U);
  EXPECT_EQ(ran[1]["sha256"], sha256_hex("print('main')\n"));
}

TEST_F(RebootTest, RebootNotSeenIsExit84) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--mute-reboot"});
  auto r = hf({"device", "reboot", "--port", board.port(), "--timeout", "500ms"});
  EXPECT_EQ(r.exit_code, dx::reboot_not_seen) << r.err;
}

}  // namespace
}  // namespace holdfast::testing::device
