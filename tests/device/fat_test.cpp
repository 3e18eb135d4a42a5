// FAT's own ordering, on an mtools-built image (this kernel has no vfat): the directory entry — and
// with it the size the board's os.stat reports — can reach the medium before the data clusters.
// The board then sees the new size with stale content; holdfast's check of the board's view must
// say "not yet" until the bytes are there.
#include <gtest/gtest.h>

#include <random>

#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::Port;
using holdfast::device::RawRepl;

bool have_mtools() { return run({"sh", "-c", "command -v mformat && command -v mcopy"}).exit_code == 0; }

TEST(FatDrive, TheBoardSeesTheSizeBeforeTheContentAndTheCheckWaits) {
  if (!have_mtools()) GTEST_SKIP() << "mtools not installed (deps/debian-packages.txt)";
  TempDir dir;
  ScopedEnv lockdir("HOLDFAST_UUCP_LOCK_DIR", dir.path());
  ScopedEnv skip("MTOOLS_SKIP_CHECK", "1");
  const std::string complete = dir / "complete.img", torn = dir / "torn.img", board_img = dir / "board.img";
  ASSERT_EQ(run({"mformat", "-C", "-i", complete, "-f", "1440", "::"}).exit_code, 0);
  std::string code = "print('new')\nPAD = '";
  std::mt19937_64 rng(7);
  for (int i = 0; i < 3000; ++i) code += static_cast<char>('a' + rng() % 26);
  code += "'\n";
  spit(dir / "code.py", code);
  ASSERT_EQ(run({"mcopy", "-i", complete, dir / "code.py", "::/code.py"}).exit_code, 0);
  // The torn state: same directory entry and FAT chain, data clusters not written yet (zeros).
  std::string img = read_file(complete);
  auto at = img.find(code);
  ASSERT_NE(at, std::string::npos) << "the file's clusters are expected contiguous on a fresh image";
  std::string torn_img = img;
  std::fill(torn_img.begin() + static_cast<std::ptrdiff_t>(at),
            torn_img.begin() + static_cast<std::ptrdiff_t>(at + code.size()), '\0');
  spit(torn, torn_img);
  spit(board_img, torn_img);

  SimBoard board({"--mode", "circuitpython", "--fat-image", board_img, "--log", dir / "log"});
  auto port = Port::open(board.port());
  RawRepl repl(port.fd());
  repl.enter();
  // The board's os.stat already reports the new size…
  auto r = repl.exec("import os\nprint(os.stat('/code.py')[6])\nprint(open('/code.py','rb').read(4))");
  EXPECT_EQ(r.out, std::to_string(code.size()) + "\r\nb'\\x00\\x00\\x00\\x00'\r\n");
  // …so size is no flush detector; the board-side digest is.
  auto view = holdfast::device::check_board_view(repl, "/code.py", code);
  EXPECT_FALSE(view.matched);
  EXPECT_EQ(view.size, code.size());
  EXPECT_NE(view.differs.find("sha256"), std::string::npos) << view.differs;
  // The data clusters arrive.
  spit(board_img, img);
  view = holdfast::device::check_board_view(repl, "/code.py", code);
  EXPECT_TRUE(view.matched) << view.differs;
  EXPECT_EQ(view.method, "sha256");
}

}  // namespace
}  // namespace holdfast::testing::device
