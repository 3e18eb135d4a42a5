// Protocol conformance against a real MicroPython v1.27 (the WebAssembly port under node, npm
// package @micropython/micropython-webassembly-pyscript, installed from tests/device/micropython/
// package.json into the build directory): the raw REPL framing, tracebacks, OSError text and the
// deploy verify snippet must behave as on the simulated board. Skipped with a message when node or
// the npm registry is unavailable.
#include <gtest/gtest.h>

#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::Port;
using holdfast::device::RawRepl;

// Installs the package once per build tree; returns the micropython.mjs path or "" (with why).
std::string install_micropython(std::string& why) {
  const std::string dir = std::string(HOLDFAST_BINARY_DIR) + "/device-micropython";
  const std::string mjs = dir + "/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs";
  struct stat st{};
  if (::stat(mjs.c_str(), &st) == 0) return mjs;
  if (run({"sh", "-c", "command -v node && command -v npm"}).exit_code != 0) {
    why = "node/npm not installed";
    return "";
  }
  run({"mkdir", "-p", dir});
  run({"cp", std::string(HOLDFAST_SOURCE_DIR) + "/tests/device/micropython/package.json", dir + "/package.json"});
  auto r = run({"npm", "install", "--no-audit", "--no-fund", "--prefix", dir}, "", std::chrono::seconds(180));
  if (r.exit_code != 0 || ::stat(mjs.c_str(), &st) != 0) {
    why = "npm install failed (registry unreachable?): " + r.err.substr(0, 200);
    return "";
  }
  return mjs;
}

struct Transcript {
  std::string out, err;
  bool operator==(const Transcript&) const = default;
};

// Real ports print "\n" from print(); boards cook it to "\r\n" on the wire, the WebAssembly port
// does not. Compare modulo that one documented difference.
std::string crlf(std::string s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) out += '\r';
    out += s[i];
  }
  return out;
}

// The WebAssembly port reports Emscripten errno values without names ("OSError: 44" for ENOENT)
// where boards print "OSError: [Errno 2] ENOENT": compare the exception type only.
std::string errno_agnostic(std::string s) {
  auto at = s.find("OSError: ");
  if (at != std::string::npos) s = s.substr(0, at + 9) + "…\r\n";
  return s;
}

std::vector<Transcript> session(const std::string& port_path, const std::vector<std::string>& programs) {
  auto port = Port::open(port_path);
  RawRepl repl(port.fd());
  repl.enter();
  std::vector<Transcript> out;
  for (const auto& p : programs) {
    auto r = repl.exec(p);
    out.push_back({crlf(r.out), errno_agnostic(r.err)});
  }
  return out;
}

TEST(Conformance, RawReplMatchesARealMicroPython) {
  std::string why;
  std::string mjs = install_micropython(why);
  if (mjs.empty()) GTEST_SKIP() << why;
  TempDir dir;
  ScopedEnv lockdir("HOLDFAST_UUCP_LOCK_DIR", dir.path());
  ::mkdir((dir / "fs").c_str(), 0755);
  const std::vector<std::string> programs{
      "print(1+2)",
      "print('a', 'b', sep='-')\nprint()",
      "1/0",
      "x = 1\ny = 2\nraise ValueError('bad')",
      "open('/no/such/file')",
      "f = open('/t.txt', 'wb')\nf.write(b'hello')\nf.close()\nimport os\nprint(os.stat('/t.txt')[6])",
  };
  SimBoardProcess real({}, std::string(HOLDFAST_SOURCE_DIR) + "/tests/device/micropython/bridge.py", mjs);
  SimBoard sim({"--fs-dir", dir / "fs"});
  auto want = session(real.port(), programs);
  auto got = session(sim.port(), programs);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].out, want[i].out) << "program: " << programs[i];
    EXPECT_EQ(got[i].err, want[i].err) << "program: " << programs[i];
  }
  // deploy's verify snippet gives the same answer on both for the same content.
  auto view_of = [&](const std::string& port_path) {
    auto port = Port::open(port_path);
    RawRepl repl(port.fd());
    repl.enter();
    repl.exec("f = open('/v.py', 'wb')\nf.write(b'print(42)\\n')\nf.close()");
    return holdfast::device::check_board_view(repl, "/v.py", "print(42)\n");
  };
  auto real_view = view_of(real.port());
  auto sim_view = view_of(sim.port());
  EXPECT_TRUE(real_view.matched) << real_view.differs;
  EXPECT_EQ(real_view.method, "sha256");
  EXPECT_EQ(sim_view.matched, real_view.matched);
  EXPECT_EQ(sim_view.method, real_view.method);
}

TEST(Conformance, DeployOverTheReplToARealMicroPython) {
  std::string why;
  std::string mjs = install_micropython(why);
  if (mjs.empty()) GTEST_SKIP() << why;
  TempDir dir;
  ScopedEnv lockdir("HOLDFAST_UUCP_LOCK_DIR", dir.path());
  SimBoardProcess real({}, std::string(HOLDFAST_SOURCE_DIR) + "/tests/device/micropython/bridge.py", mjs);
  std::string code;
  for (int i = 0; i < 2000; ++i) code += "v" + std::to_string(i) + " = " + std::to_string(i) + "\n";
  spit(dir / "main.py", code);
  // No reboot: the WebAssembly port exits on a soft reset (no persistence to reboot into).
  auto r = hf({"device", "deploy", "--port", real.port(), "--no-reboot", "--json", dir / "main.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["verified_by"], "sha256");
  EXPECT_EQ(j["size"], code.size());
  r = hf({"device", "exec", "--port", real.port(), "import os\nprint(sorted(os.listdir('/')))"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("'main.py'"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("holdfast-tmp"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace holdfast::testing::device
