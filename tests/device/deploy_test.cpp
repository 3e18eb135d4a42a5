// deploy end to end against the simulated board: over the raw REPL (MicroPython, its own flash)
// and through a USB drive (CircuitPython, an ext2 image on a loop device that the board reads
// directly, so the host's page cache lags it as in the bug).
#include <gtest/gtest.h>

#include <random>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

namespace dx = holdfast::device::exit_code;
using holdfast::device::detail::sha256_hex;

class DeployTest : public BoardTest {
 public:
  // The "ran" events (a finished run) of the board's main program, waiting until there are at
  // least `n` (the board logs a run from its own thread, possibly just after deploy saw
  // "code.py output:").
  std::vector<nlohmann::json> runs(size_t n) const { return events("ran", n); }
  // The "run" events (a started run), once at least `n` runs have finished.
  std::vector<nlohmann::json> started(size_t n) const {
    runs(n);
    return events("run", 0);
  }
};

// A program of exactly `size` bytes (>= 40) that prints its round and is valid Python only whole:
// a torn copy ends inside the string literal and fails to compile.
std::string program(int round, size_t size, std::mt19937_64& rng) {
  std::string head = "print('round " + std::to_string(round) + "')\nPAD = '";
  std::string tail = "'\nassert len(PAD) > 0\n";
  std::string pad;
  size_t n = size > head.size() + tail.size() + 1 ? size - head.size() - tail.size() : 1;
  pad.reserve(n);
  std::uniform_int_distribution<int> ch('a', 'z');
  for (size_t i = 0; i < n; ++i) pad += static_cast<char>(ch(rng));
  return head + pad + tail;
}

TEST_F(DeployTest, OverTheReplReplacesAtomicallyVerifiesAndReboots) {
  spit(fs() + "/main.py", "print('old')\n");
  SimBoard board({"--fs-dir", fs(), "--log", log()});
  spit(dir / "main.py", "print('new')\n");
  auto r = hf({"device", "deploy", "--port", board.port(), dir / "main.py", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["verified_by"], "sha256");
  EXPECT_EQ(j["rebooted"], true);
  EXPECT_EQ(read_file(fs() + "/main.py"), "print('new')\n");
  auto s = started(1);
  ASSERT_EQ(s.size(), 1U);
  EXPECT_EQ(s[0]["sha256"], sha256_hex("print('new')\n"));
  EXPECT_EQ(runs(1)[0]["ok"], true);
  // Nothing beside the file.
  auto listing = run({"ls", "-a", fs()}).out;
  EXPECT_EQ(listing.find("holdfast-tmp"), std::string::npos) << listing;
}

TEST_F(DeployTest, ResetMidTransferLeavesTheOldFileWholeAndNoTempFile) {
  spit(fs() + "/main.py", "print('old')\n");
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--reset-after-bytes", "6000"});
  std::mt19937_64 rng(1);
  spit(dir / "main.py", program(1, 20000, rng));
  auto r = hf({"device", "deploy", "--port", board.port(), "--step-timeout", "2s", dir / "main.py"});
  EXPECT_EQ(r.exit_code, dx::board_reset) << r.err;
  EXPECT_EQ(read_file(fs() + "/main.py"), "print('old')\n");
  auto listing = run({"ls", "-a", fs()}).out;
  EXPECT_EQ(listing.find("holdfast-tmp"), std::string::npos) << listing;
  // The next deploy succeeds.
  r = hf({"device", "deploy", "--port", board.port(), dir / "main.py"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(fs() + "/main.py"), read_file(dir / "main.py"));
}

TEST_F(DeployTest, FallsBackToCrc32AndToReadBack) {
  SimBoard crc({"--fs-dir", fs(), "--log", log(), "--no-hashlib"});
  spit(dir / "a.py", "print('a')\n");
  auto r = hf({"device", "deploy", "--port", crc.port(), "--no-reboot", "--json", dir / "a.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["verified_by"], "crc32");
  SimBoard none({"--fs-dir", fs(), "--log", log(), "--no-hashlib", "--no-crc32"});
  r = hf({"device", "deploy", "--port", none.port(), "--no-reboot", "--json", dir / "a.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["verified_by"], "readback");
}

TEST_F(DeployTest, DigestMismatchHasItsOwnExitCode) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--corrupt-reads"});
  spit(dir / "a.py", "print('a')\n");
  auto r = hf({"device", "deploy", "--port", board.port(), "--flush-timeout", "300ms", dir / "a.py"});
  EXPECT_EQ(r.exit_code, dx::digest_mismatch) << r.err;
  EXPECT_NE(r.err.find("digest mismatch"), std::string::npos) << r.err;
  EXPECT_TRUE(started(0).empty()) << "the board must not be rebooted into unverified code";
}

TEST_F(DeployTest, RebootNotObservedHasItsOwnExitCode) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--mute-reboot"});
  spit(dir / "a.py", "print('a')\n");
  auto r = hf({"device", "deploy", "--port", board.port(), "--reboot-timeout", "500ms", dir / "a.py"});
  EXPECT_EQ(r.exit_code, dx::reboot_not_seen) << r.err;
}

TEST_F(DeployTest, CircuitPythonRefusesReplWritesWithErrno30) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << kNoLoopDrive;
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", log()});
  spit(dir / "code.py", "print('x')\n");
  auto r = hf({"device", "deploy", "--port", board.port(), dir / "code.py"});
  EXPECT_EQ(r.exit_code, 73) << r.err;
  EXPECT_NE(r.err.find("read-only to code"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--drive"), std::string::npos) << r.err;
}

// The bug itself: a plain write through the mount is in the host's page cache, not on the board.
// (Skipped when the kernel happened to write it back already, e.g. someone ran sync(1).)
TEST_F(DeployTest, TheBoardLagsTheHostPageCache) {
  LoopDrive drive(dir.path());
  if (!drive.ok()) GTEST_SKIP() << kNoLoopDrive;
  spit(drive.mount() + "/code.py", "print('old')\n");
  ::sync();
  spit(drive.mount() + "/code.py", "print('new and longer')\n");
  std::string seen = drive.board_read("/code.py");
  if (seen == "print('new and longer')\n") GTEST_SKIP() << "the kernel wrote back before we looked";
  EXPECT_NE(seen, "print('new and longer')\n");
  // deploy pushes the flush, so the board sees the new file without waiting for writeback.
  SimBoard board({"--mode", "circuitpython", "--image", drive.image(), "--log", log()});
  spit(dir / "code.py", "print('deployed')\n");
  auto r = hf({"device", "deploy", "--port", board.port(), "--drive", drive.mount(), "--json", dir / "code.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(drive.board_read("/code.py"), "print('deployed')\n");
}

// The seed scenario: write → deploy → the board runs the new code, never the old or a torn one.
void seed_rounds(DeployTest& t, bool drive_mode, int rounds, size_t max_size) {
  std::mt19937_64 rng(20261126);
  std::uniform_int_distribution<size_t> size(64, max_size);
  std::unique_ptr<LoopDrive> drive;
  std::vector<std::string> args{"--log", t.log()};
  if (drive_mode) {
    drive = std::make_unique<LoopDrive>(t.dir.path(), "4M");
    if (!drive->ok()) GTEST_SKIP() << kNoLoopDrive;
    args.insert(args.end(), {"--mode", "circuitpython", "--image", drive->image()});
  } else {
    args.insert(args.end(), {"--fs-dir", t.fs()});
  }
  SimBoard board(args);
  const std::string dest = drive_mode ? "code.py" : "main.py";
  for (int round = 1; round <= rounds; ++round) {
    std::string code = program(round, size(rng), rng);
    spit(t.dir / dest, code);
    std::vector<std::string> cmd{"device", "deploy", "--port", board.port(), t.dir / dest};
    if (drive_mode) cmd.insert(cmd.end(), {"--drive", drive->mount()});
    auto r = hf(cmd);
    ASSERT_EQ(r.exit_code, 0) << "round " << round << ": " << r.err;
    auto s = t.started(static_cast<size_t>(round));
    auto ran = t.runs(static_cast<size_t>(round));
    ASSERT_EQ(s.size(), static_cast<size_t>(round)) << "round " << round;
    EXPECT_EQ(s.back()["sha256"], sha256_hex(code)) << "round " << round << " ran other code";
    EXPECT_EQ(s.back()["size"], code.size());
    EXPECT_EQ(ran.back()["ok"], true) << "round " << round << ": " << ran.back()["error"];
  }
}

int seed_round_count() { return soak() ? 100 : sanitized() ? 2 : 4; }

TEST_F(DeployTest, SeedScenarioThroughTheDrive) { seed_rounds(*this, true, seed_round_count(), 1 << 20); }

TEST_F(DeployTest, SeedScenarioOverTheRepl) {
  seed_rounds(*this, false, seed_round_count(), soak() ? (1 << 20) : (64 << 10));
}

}  // namespace
}  // namespace holdfast::testing::device
