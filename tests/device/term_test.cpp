// device term's Ctrl-D guard: a Ctrl-D typed while code.py is still in the host's page cache must
// not reach the board until the board can read the new file.
#include <gtest/gtest.h>

#include <thread>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::detail::sha256_hex;

class TermTest : public ::testing::Test {
 protected:
  TempDir dir;
  ScopedEnv lockdir{"HOLDFAST_UUCP_LOCK_DIR", dir.path()};

  // The sha256 of what the board ran at its first reboot.
  std::string first_run_sha() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& e : board_events(dir / "log")) {
        if (e["event"] == "run") return e["sha256"];
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }
};

// Returns false (and the test skips) when the kernel wrote back before the board looked.
bool stale_on_board(const LoopDrive& drive, const std::string& fresh) { return drive.board_read("/code.py") != fresh; }

TEST_F(TermTest, CtrlDIsHeldUntilTheDriveIsFlushed) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log"});
  const std::string fresh = "print('new, saved by an editor that does not fsync')\n";
  spit(drive.mount() + "/code.py", fresh);
  if (!stale_on_board(drive, fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  Term term({"--port", board.port(), "--drive", drive.mount(), "--journal", dir / "journal"});
  ASSERT_TRUE(term.read_until(">>> "));
  term.type("\x04");
  ASSERT_TRUE(term.read_until("code.py output:")) << term.seen();
  EXPECT_EQ(first_run_sha(), sha256_hex(fresh)) << "the board rebooted into the old code";
}

// Without the guard the same keystroke reboots the board into whatever it can read: the bug.
TEST_F(TermTest, WithoutTheGuardTheBoardRunsTheOldCode) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", dir / "log"});
  const std::string fresh = "print('new')\n";
  spit(drive.mount() + "/code.py", fresh);
  if (!stale_on_board(drive, fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  Term term({"--port", board.port(), "--no-guard"});
  ASSERT_TRUE(term.read_until(">>> "));
  term.type("\x04");
  ASSERT_TRUE(term.read_until("code.py output:")) << term.seen();
  std::string ran = first_run_sha();
  if (ran == sha256_hex(fresh)) GTEST_SKIP() << "the kernel wrote back before the reboot";
  EXPECT_EQ(ran, sha256_hex("print('old')\n"));
}

TEST_F(TermTest, PendingListsDirtyFilesAndUnmatchedRecords) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << "needs root, a loop device and ext2";
  ::sync();
  spit(drive.mount() + "/lib.py", "x = 1\n");
  auto pending = holdfast::device::pending_for_board(drive.mount(), dir / "journal");
  if (pending.empty()) GTEST_SKIP() << "the kernel wrote back already";
  EXPECT_NE(pending.front().find("lib.py"), std::string::npos);
  ::sync();
  EXPECT_TRUE(holdfast::device::pending_for_board(drive.mount(), dir / "journal").empty());
  // A recorded write whose file later changed is pending until it matches again.
  auto r = hf({"write", "--record", "--journal", dir / "journal", drive.mount() + "/code.py"}, "print(1)\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The write fsyncs its file and directory; on ext2 the block device may still hold dirty
  // metadata (bitmaps), which the device-level check rightly counts as "not on the board yet".
  ::sync();
  auto after_write = holdfast::device::pending_for_board(drive.mount(), dir / "journal");
  EXPECT_TRUE(after_write.empty()) << after_write.front();
  spit(drive.mount() + "/code.py", "print(2)\n");
  ::sync();
  pending = holdfast::device::pending_for_board(drive.mount(), dir / "journal");
  ASSERT_EQ(pending.size(), 1U);
  EXPECT_NE(pending.front().find("recorded write"), std::string::npos) << pending.front();
}

}  // namespace
}  // namespace holdfast::testing::device
