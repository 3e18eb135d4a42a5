// device term's Ctrl-D guard: a Ctrl-D typed while code.py is still in the host's page cache must
// not reach the board until the board can read the new file.
#include <gtest/gtest.h>


#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::detail::sha256_hex;

class TermTest : public BoardTest {
 protected:
  // The sha256 of what the board ran at its first reboot ("" if it did not within 60 s).
  std::string first_run_sha() const {
    auto runs = events("run", 1);
    return runs.empty() ? "" : runs[0]["sha256"].get<std::string>();
  }
};

TEST_F(TermTest, CtrlDIsHeldUntilTheDriveIsFlushed) {
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log()});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  const std::string fresh = "print('new, saved by an editor that does not fsync')\n";
  if (!cp.save_unflushed(fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  Term term({"--port", cp.board().port(), "--drive", cp.drive().mount(), "--journal", dir / "journal"});
  ASSERT_TRUE(term.read_until(">>> "));
  term.type("\x04");
  ASSERT_TRUE(term.read_until("code.py output:")) << term.seen();
  EXPECT_EQ(first_run_sha(), sha256_hex(fresh)) << "the board rebooted into the old code";
}

// Without the guard the same keystroke reboots the board into whatever it can read: the bug.
TEST_F(TermTest, WithoutTheGuardTheBoardRunsTheOldCode) {
  CircuitPythonOnDrive cp(dir.path(), "print('old')\n", {"--log", log()});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  const std::string fresh = "print('new')\n";
  if (!cp.save_unflushed(fresh)) GTEST_SKIP() << "the kernel wrote back before the board looked";
  Term term({"--port", cp.board().port(), "--no-guard"});
  ASSERT_TRUE(term.read_until(">>> "));
  term.type("\x04");
  ASSERT_TRUE(term.read_until("code.py output:")) << term.seen();
  std::string ran = first_run_sha();
  if (ran == sha256_hex(fresh)) GTEST_SKIP() << "the kernel wrote back before the reboot";
  EXPECT_EQ(ran, sha256_hex("print('old')\n"));
}

TEST_F(TermTest, PendingListsDirtyFilesAndUnmatchedRecords) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << kNoLoopDrive;
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
