// RAII fixtures for the device tests: the simulated board (tests/device/simboard.py behind a pty),
// an ext2 image on a loop device mounted on the host (the board's USB drive), and helpers.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/testing.hpp"

namespace holdfast::testing::device {

inline std::string simboard_path() { return std::string(HOLDFAST_SOURCE_DIR) + "/tests/device/simboard.py"; }

// Runs the holdfast command with a 300 s hang limit (a deploy to a slow board takes long).
inline CommandResult hf(const std::vector<std::string>& args, const std::string& stdin_data = "") {
  return holdfast(args, stdin_data, std::chrono::seconds(300));
}

// A UUCP lock file's content in the HDB format minicom and picocom write: "%10d\n".
inline std::string fmt_pid(pid_t pid) {
  std::string s = std::to_string(pid);
  return std::string(s.size() < 10 ? 10 - s.size() : 0, ' ') + s + "\n";
}

inline bool soak() { return std::getenv("HOLDFAST_SOAK") != nullptr; }
inline bool sanitized() {
#ifdef HOLDFAST_SANITIZED
  return true;
#else
  return false;
#endif
}

inline void spit(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// A board process: a /usr/bin/python3 `script` owning a pty master, which prints
// "READY /dev/pts/N" once the port opens. Killed and reaped on destruction.
class SimBoardProcess {
 public:
  SimBoardProcess(const std::vector<std::string>& args, const std::string& script,
                  const std::string& first_arg = "") {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> argv{"/usr/bin/python3", script};
    if (!first_arg.empty()) argv.push_back(first_arg);
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      exec_argv(argv);
    }
    ::close(out[1]);
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) continue;
      char buf[256];
      ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    ::close(out[0]);
    if (line.rfind("READY ", 0) != 0) {
      stop();
      throw std::runtime_error("simulated board did not start: " + line);
    }
    port_ = line.substr(6, line.find('\n') - 6);
  }
  ~SimBoardProcess() { stop(); }
  SimBoardProcess(const SimBoardProcess&) = delete;
  SimBoardProcess& operator=(const SimBoardProcess&) = delete;
  const std::string& port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }
  pid_t pid_ = -1;
  std::string port_;
};

// The simulated board (tests/device/simboard.py).
class SimBoard : public SimBoardProcess {
 public:
  explicit SimBoard(const std::vector<std::string>& args) : SimBoardProcess(args, simboard_path()) {}
};

// `holdfast device term …` with its stdin and stdout on pipes; killed and reaped on destruction.
class Term {
 public:
  explicit Term(const std::vector<std::string>& args) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    std::vector<std::string> argv{holdfast_path(), "device", "term"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      exec_argv(argv);
    }
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~Term() {
    if (in_ >= 0) ::close(in_);
    ::close(out_);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  Term(const Term&) = delete;
  Term& operator=(const Term&) = delete;
  void type(const std::string& keys) { if (::write(in_, keys.data(), keys.size()) != static_cast<ssize_t>(keys.size())) throw std::runtime_error("write to term"); }
  // Reads the board's output until `marker` (or 60 s).
  bool read_until(const std::string& marker) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (seen_.find(marker) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 500) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) return false;
      seen_.append(buf, static_cast<size_t>(n));
    }
    return seen_.find(marker) != std::string::npos;
  }
  const std::string& seen() const { return seen_; }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string seen_;
};

// The board's log of events (JSON lines).
inline std::vector<nlohmann::json> board_events(const std::string& log) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_file(log));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

// An ext2 image on a loop device, mounted at MOUNT without `sync` (the default, as desktops mount
// USB drives). Unmounted and detached on destruction. ok() is false when this machine cannot
// (not root, no loop devices, no ext2): tests then skip.
class LoopDrive {
 public:
  LoopDrive(const std::string& dir, const std::string& size = "8M") : image_(dir + "/drive.img"), mount_(dir + "/CIRCUITPY") {
    if (::geteuid() != 0) return;
    if (run({"mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", image_, size}).exit_code != 0) return;
    auto r = run({"losetup", "-f", "--show", image_});
    if (r.exit_code != 0) return;
    loop_ = r.out.substr(0, r.out.find('\n'));
    ::mkdir(mount_.c_str(), 0755);
    if (::mount(loop_.c_str(), mount_.c_str(), "ext2", 0, nullptr) != 0) {
      run({"losetup", "-d", loop_});
      loop_.clear();
      return;
    }
    mounted_ = true;
  }
  ~LoopDrive() {
    if (mounted_) ::umount2(mount_.c_str(), MNT_DETACH);
    if (!loop_.empty()) run({"losetup", "-d", loop_});
  }
  LoopDrive(const LoopDrive&) = delete;
  LoopDrive& operator=(const LoopDrive&) = delete;
  bool ok() const { return mounted_; }
  const std::string& image() const { return image_; }
  const std::string& mount() const { return mount_; }
  const std::string& loop() const { return loop_; }
  // What the board reads: the image, bypassing the host's mount and page cache.
  std::string board_read(const std::string& path) const {
    return run({"debugfs", "-R", "cat " + path, image_}).out;
  }

 private:
  std::string image_, mount_, loop_;
  bool mounted_ = false;
};

// Sets an environment variable for the test's lifetime.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_.empty()) {
      ::unsetenv(name_);
    } else {
      ::setenv(name_, old_.c_str(), 1);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
};

// What a test that needs a LoopDrive says when it skips because the drive cannot be made.
inline constexpr const char* kNoLoopDrive = "needs root, a loop device and ext2";

// A CircuitPython board (simboard --mode circuitpython) reading its USB drive, a LoopDrive in
// `dir`, on which code.py = `code` was written and synced before the board started: the board
// reads exactly `code`. `board_args` are added after --mode and --image. ok() is false, and no
// board runs, where the drive cannot be made (the test then skips with kNoLoopDrive).
class CircuitPythonOnDrive {
 public:
  CircuitPythonOnDrive(const std::string& dir, const std::string& code, std::vector<std::string> board_args)
      : drive_(dir) {
    if (!drive_.ok()) return;
    spit(drive_.mount() + "/code.py", code);
    ::sync();
    board_args.insert(board_args.begin(), {"--mode", "circuitpython", "--image", drive_.image()});
    board_.emplace(board_args);
  }
  bool ok() const { return board_.has_value(); }
  const LoopDrive& drive() const { return drive_; }
  const SimBoard& board() const { return *board_; }
  // Saves `code` as code.py through the host's mount without syncing, as an editor that does not
  // fsync does. True if the board still reads the old code.py (the new bytes wait in the host's
  // page cache: the situation under test); false if the kernel wrote them back first (skip).
  bool save_unflushed(const std::string& code) const {
    spit(drive_.mount() + "/code.py", code);
    return drive_.board_read("/code.py") != code;
  }

 private:
  LoopDrive drive_;
  std::optional<SimBoard> board_;
};

// Base fixture of the board tests: a fresh directory `dir`, which is also the UUCP lock directory
// (HOLDFAST_UUCP_LOCK_DIR), so no test sees or leaves a lock in the system's. Members are public
// for helpers outside the test body.
class BoardTest : public ::testing::Test {
 public:
  TempDir dir;
  ScopedEnv lockdir{"HOLDFAST_UUCP_LOCK_DIR", dir.path()};

  // Where the simulated board logs its events (pass as --log).
  std::string log() const { return dir / "log"; }
  // dir/fs, created if missing: a MicroPython board's flash (pass as --fs-dir).
  std::string fs() const {
    std::string p = dir / "fs";
    ::mkdir(p.c_str(), 0755);
    return p;
  }
  // The board's events of `kind` from log(), once there are at least `at_least` of them (the
  // board logs from its own thread, possibly after the command under test has returned). Polls
  // the log; after 60 s (a hang) returns what there is, so the caller's size assertion fails.
  std::vector<nlohmann::json> events(const std::string& kind, size_t at_least) const {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      std::vector<nlohmann::json> out;
      for (const auto& e : board_events(log())) {
        if (e["event"] == kind) out.push_back(e);
      }
      if (out.size() >= at_least || std::chrono::steady_clock::now() > deadline) return out;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
};

}  // namespace holdfast::testing::device
