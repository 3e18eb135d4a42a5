#include "support/testing.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace holdfast::testing {

TempDir::TempDir(const std::string& under) {
  std::string base = under;
  if (base.empty()) {
    const char* t = std::getenv("TMPDIR");
    base = (t != nullptr && *t != '\0') ? t : "/tmp";
  }
  std::string templ = base + "/holdfast-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ScopedEnv::ScopedEnv(std::string name, const std::string& value) : name_(std::move(name)) {
  if (const char* old = std::getenv(name_.c_str())) previous_ = old;
  ::setenv(name_.c_str(), value.c_str(), 1);
}

ScopedEnv::~ScopedEnv() {
  if (previous_) {
    ::setenv(name_.c_str(), previous_->c_str(), 1);
  } else {
    ::unsetenv(name_.c_str());
  }
}

TmpfsMount::TmpfsMount(const std::string& options) { mount_again(options); }

TmpfsMount::~TmpfsMount() {
  if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
}

void TmpfsMount::mount_again(const std::string& options) {
  if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, options.c_str()) == 0;
  why_ = mounted_ ? "" : std::strerror(errno);
}

bool TmpfsMount::remount(const std::string& options, unsigned long flags) {
  const char* data = options.empty() ? nullptr : options.c_str();
  if (::mount(nullptr, dir_.path().c_str(), nullptr, MS_REMOUNT | flags, data) == 0) return true;
  why_ = std::strerror(errno);
  return false;
}

std::string holdfast_path() {
#ifdef HOLDFAST_CLI_PATH
  return HOLDFAST_CLI_PATH;
#else
  return "holdfast";
#endif
}

std::string dynamic_holdfast_path() {
  const std::string path = holdfast_path();
  const std::string dynamic = path.substr(0, path.rfind('/') + 1) + "holdfast-dynamic";
  return ::access(dynamic.c_str(), X_OK) == 0 ? dynamic : path;
}

namespace {
void drain(int fd, std::string& into) {
  char buf[4096];
  ssize_t n = ::read(fd, buf, sizeof buf);
  if (n > 0) into.append(buf, static_cast<size_t>(n));
}
}  // namespace

CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data,
                  std::chrono::seconds timeout) {
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) || ::pipe2(out, O_CLOEXEC) || ::pipe2(err, O_CLOEXEC)) {
    throw std::system_error(errno, std::generic_category(), "pipe");
  }
  pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    exec_argv(argv);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  // Feed stdin fully first: inputs in tests are small.
  size_t off = 0;
  ::signal(SIGPIPE, SIG_IGN);
  while (off < stdin_data.size()) {
    ssize_t n = ::write(in[1], stdin_data.data() + off, stdin_data.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(in[1]);
  CommandResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now()).count());
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      break;
    }
    int r = ::poll(fds, 2, left);
    if (r < 0 && errno == EINTR) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        std::string& into = i == 0 ? result.out : result.err;
        size_t before = into.size();
        drain(fds[i].fd, into);
        if (into.size() == before) (i == 0 ? out_open : err_open) = false;
      }
    }
  }
  ::close(out[0]);
  ::close(err[0]);
  result.exit_code = wait_child(pid);
  return result;
}

CommandResult holdfast(const std::vector<std::string>& args, const std::string& stdin_data,
                       std::chrono::seconds timeout) {
  std::vector<std::string> argv{holdfast_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, stdin_data, timeout);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

void exec_argv(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  ::_exit(127);
}

pid_t fork_child(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (...) {
      rc = 98;
    }
    ::_exit(rc);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

StartGun::StartGun() {
  int fds[2];
  if (::pipe(fds) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  read_fd_ = fds[0];
  write_fd_ = fds[1];
}

StartGun::~StartGun() {
  if (read_fd_ >= 0) ::close(read_fd_);
  if (write_fd_ >= 0) ::close(write_fd_);
}

void StartGun::wait() {
  if (write_fd_ >= 0) {
    ::close(write_fd_);
    write_fd_ = -1;
  }
  char c;
  while (::read(read_fd_, &c, 1) < 0 && errno == EINTR) {
  }
}

void StartGun::close_in_child() {
  if (write_fd_ >= 0) ::close(write_fd_);
  write_fd_ = -1;
}

void StartGun::release() {
  if (write_fd_ >= 0) {
    ::close(write_fd_);
    write_fd_ = -1;
  }
}

int blocked_lock_waiters_on(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  // /proc/locks names the inode as MAJOR:MINOR:INODE followed by the range.
  char inode[64];
  std::snprintf(inode, sizeof inode, ":%lu ", static_cast<unsigned long>(st.st_ino));
  std::ifstream in("/proc/locks");
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find("->") != std::string::npos && line.find(inode) != std::string::npos) ++n;
  }
  return n;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  return names;
}

ProcessIdentity dead_identity() {
  // The child blocks on a pipe until its identity has been read, then exits and is reaped.
  int gate[2];
  if (::pipe(gate) != 0) std::abort();
  pid_t pid = fork_child([&] {
    ::close(gate[1]);
    char c;
    (void)!::read(gate[0], &c, 1);
    return 0;
  });
  auto id = identity_of(pid);
  ::close(gate[1]);
  ::close(gate[0]);
  wait_child(pid);
  return id.value();
}

void* shared_memory(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
  return p;
}

void free_shared_memory(void* p, size_t bytes) { ::munmap(p, bytes); }

}  // namespace holdfast::testing
