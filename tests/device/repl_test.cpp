// The raw REPL client against the simulated board: exec framing, raw-paste flow control and its
// fallbacks, interrupting a running program, tracebacks and exit codes.
#include <gtest/gtest.h>
#include <pty.h>

#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::Port;
using holdfast::device::RawRepl;
using holdfast::device::ReplOptions;

class ReplTest : public BoardTest {
 protected:
  std::vector<std::string> violations() {
    std::vector<std::string> v;
    for (const auto& e : board_events(log())) {
      if (e["event"] == "violation") v.push_back(e["what"].get<std::string>());
    }
    return v;
  }
};

TEST_F(ReplTest, ExecPrintsStdoutAndExitsZero) {
  SimBoard board({"--fs-dir", fs(), "--log", log()});
  auto r = hf({"device", "exec", "--port", board.port(), "print(1+2)"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "3\r\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(ReplTest, TracebackGoesToStderrWithExitOne) {
  SimBoard board({"--fs-dir", fs(), "--log", log()});
  auto r = hf({"device", "exec", "--port", board.port(), "print('before')\n1/0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "before\r\n");
  EXPECT_NE(r.err.find("Traceback (most recent call last):"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ZeroDivisionError: divide by zero"), std::string::npos) << r.err;
}

TEST_F(ReplTest, ExecReadsStdinAndRunReadsAFile) {
  SimBoard board({"--fs-dir", fs(), "--log", log()});
  auto r = hf({"device", "exec", "--port", board.port(), "-"}, "for i in range(3):\n    print(i)\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "0\r\n1\r\n2\r\n");
  spit(dir / "prog.py", "import sys\nprint('ran', 6*7)\n");
  r = hf({"device", "run", "--port", board.port(), dir / "prog.py"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ran 42\r\n");
}

// A program much larger than the window: the client must only send what the board granted (the
// simulator logs a violation for every byte beyond its credit).
TEST_F(ReplTest, RawPasteRespectsTheWindow) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--window", "32"});
  auto port = Port::open(board.port());
  RawRepl repl(port.fd());
  repl.enter();
  std::string code;
  for (int i = 0; i < 400; ++i) code += "x" + std::to_string(i) + " = " + std::to_string(i) + "\n";
  code += "print(x399 + x1)\n";
  auto r = repl.exec(code);
  EXPECT_TRUE(r.used_raw_paste);
  EXPECT_EQ(r.out, "400\r\n");
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(violations().empty()) << violations().front();
  // The connection stays usable: globals persist between execs, as on a board.
  EXPECT_EQ(repl.exec("print(x2)").out, "2\r\n");
}

TEST_F(ReplTest, FallsBackToPlainRawWhenTheBoardAnswersR00) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--no-raw-paste"});
  auto port = Port::open(board.port());
  RawRepl repl(port.fd());
  repl.enter();
  auto r = repl.exec("print('plain')");
  EXPECT_FALSE(r.used_raw_paste);
  EXPECT_FALSE(repl.raw_paste_supported());
  EXPECT_EQ(r.out, "plain\r\n");
  EXPECT_EQ(repl.exec("print('again')").out, "again\r\n");
}

TEST_F(ReplTest, FallsBackOnOldFirmwareThatAnswersRa) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--old-firmware"});
  auto port = Port::open(board.port());
  RawRepl repl(port.fd());
  repl.enter();
  auto r = repl.exec("print('old')");
  EXPECT_FALSE(r.used_raw_paste);
  EXPECT_EQ(r.out, "old\r\n");
}

TEST_F(ReplTest, InterruptsARunningProgramFirst) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--program",
                  "import time\nwhile True:\n    print('tick')\n    time.sleep(0.05)\n"});
  auto r = hf({"device", "exec", "--port", board.port(), "print('got in')"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "got in\r\n");
}

TEST_F(ReplTest, AProgramThatDisabledCtrlCIsReportedClearly) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--program",
                  "import micropython, time\nmicropython.kbd_intr(-1)\nwhile True:\n    print('busy')\n"
                  "    time.sleep(0.05)\n"});
  auto r = hf({"device", "exec", "--port", board.port(), "--step-timeout", "1s", "print(1)"});
  EXPECT_EQ(r.exit_code, holdfast::device::exit_code::kbd_intr_disabled) << r.err;
  EXPECT_NE(r.err.find("kbd_intr"), std::string::npos) << r.err;
}

TEST_F(ReplTest, ASilentPortIsNotAnswering) {
  int master = -1, slave = -1;
  char name[256];
  ASSERT_EQ(::openpty(&master, &slave, name, nullptr, nullptr), 0);
  auto r = hf({"device", "exec", "--port", name, "--step-timeout", "500ms", "print(1)"});
  ::close(master);
  ::close(slave);
  EXPECT_EQ(r.exit_code, holdfast::device::exit_code::not_answering) << r.err;
  EXPECT_NE(r.err.find("not answering"), std::string::npos) << r.err;
}

TEST_F(ReplTest, ASlowLineStillCompletes) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--slow", "--window", "64"});
  std::string code;
  for (int i = 0; i < 100; ++i) code += "print('line " + std::to_string(i) + "')\n";
  auto r = hf({"device", "exec", "--port", board.port(), "-"}, code);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("line 99\r\n"), std::string::npos);
  EXPECT_TRUE(violations().empty());
  r = hf({"device", "exec", "--no-raw-paste", "--port", board.port(), "-"}, code);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("line 99\r\n"), std::string::npos);
}

TEST_F(ReplTest, AResetMidTransferIsReportedAsAReset) {
  SimBoard board({"--fs-dir", fs(), "--log", log(), "--reset-after-bytes", "300"});
  std::string code;
  for (int i = 0; i < 100; ++i) code += "y = " + std::to_string(i) + "\n";
  auto r = hf({"device", "exec", "--port", board.port(), "--step-timeout", "2s", "-"}, code);
  EXPECT_EQ(r.exit_code, holdfast::device::exit_code::board_reset) << r.err;
  // The board is usable again afterwards.
  r = hf({"device", "exec", "--port", board.port(), "print('back')"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "back\r\n");
}

TEST_F(ReplTest, CircuitPythonBoardEntersFromCodeDone) {
  CircuitPythonOnDrive cp(dir.path(), "print('hello from code.py')\n", {"--log", log()});
  if (!cp.ok()) GTEST_SKIP() << kNoLoopDrive;
  auto r = hf({"device", "exec", "--port", cp.board().port(), "import os\nprint(os.listdir('/'))"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("code.py"), std::string::npos) << r.out;
  // The drive is read-only to code.
  r = hf({"device", "exec", "--port", cp.board().port(), "open('/x.py', 'w')"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("OSError: [Errno 30] EROFS"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace holdfast::testing::device
