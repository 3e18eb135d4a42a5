// Small file helpers for the durable hand-off tests.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/testing.hpp"

namespace holdfast::testing::durable {

// This suite's names for the shared helpers in support/testing.hpp.
// The holdfast command under test.
inline std::string cli_path() { return holdfast_path(); }
// Runs the holdfast command (named hf: `holdfast` alone is also the namespace).
inline CommandResult hf(const std::vector<std::string>& args, const std::string& stdin_data = "") {
  return holdfast(args, stdin_data);
}
inline std::string slurp(const std::string& path) { return read_file(path); }

inline void spit(const std::string& path, const std::string& data, mode_t mode = 0644) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error("open " + path);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fd);
}

// As spit, then fsync: the bytes are on the device when it returns (a well-behaved writer).
inline void spit_durable(const std::string& path, const std::string& data, mode_t mode = 0644) {
  spit(path, data, mode);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) throw std::runtime_error("fsync " + path);
  ::close(fd);
}

inline mode_t mode_of(const std::string& path) {
  struct stat st {};
  ::stat(path.c_str(), &st);
  return st.st_mode & 07777;
}

// Deterministic pseudo-random bytes.
inline std::string pattern(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x & 0xff);
  }
  return s;
}

inline int64_t mono_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The filesystems every durable test runs on: tmpfs and ext4 (/tmp here).
inline std::vector<std::string> test_roots() { return {"/dev/shm", "/tmp"}; }

}  // namespace holdfast::testing::durable

namespace holdfast::testing::durable {

// The holdfast command running in the background, stdout and stderr to files. SIGKILLed and
// reaped on destruction if still running.
class Background {
 public:
  Background(const std::vector<std::string>& args, const std::string& out_file) : out_(out_file) {
    std::vector<std::string> argv{cli_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork_child([argv, out_file] {
      std::vector<char*> a;
      for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      int fd = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int efd = ::open((out_file + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || efd < 0) return 120;
      ::dup2(fd, 1);
      ::dup2(efd, 2);
      ::execv(a[0], a.data());
      return 127;
    });
  }
  ~Background() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)wait_child(pid_);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  // True once the process has exited (its status is then kept for wait()).
  bool exited() {
    if (pid_ <= 0) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
    pid_ = -1;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return true;
  }
  // Waits for the exit; returns its status.
  int wait() {
    if (pid_ > 0) {
      status_ = wait_child(pid_);
      pid_ = -1;
    }
    return status_;
  }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(out_ + ".err"); }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::string out_;
};

}  // namespace holdfast::testing::durable
