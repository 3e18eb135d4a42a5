#include "support/faultfs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace holdfast::testing {

namespace {

std::string& registered_path() {
  static std::string path;
  return path;
}

bool is_mounted(const std::string& mount) {
  struct stat a{}, b{};
  if (::stat(mount.c_str(), &a) != 0) return false;
  if (::stat((mount + "/..").c_str(), &b) != 0) return false;
  return a.st_dev != b.st_dev;
}

// Reaps `pid`, waiting up to `timeout`; SIGKILLs it if it does not exit in time.
void reap(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

bool FaultFs::register_binary_path(const char* path) {
  if (registered_path().empty()) registered_path() = path;
  return true;
}

std::string FaultFs::binary_path() {
  if (const char* env = std::getenv("HOLDFAST_FAULTFS_PATH"); env != nullptr && *env != '\0') {
    return env;
  }
  if (!registered_path().empty()) return registered_path();
  // Build tree layout: BUILD/tests/<test exe>, BUILD/tools/faultfs/faultfs.
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return "faultfs";
  std::string self(exe, static_cast<size_t>(n));
  std::string dir = self.substr(0, self.rfind('/'));
  return dir + "/../tools/faultfs/faultfs";
}

FaultFs::FaultFs(const std::string& options, const std::string& under)
    : dir_(std::make_unique<TempDir>(under)),
      backing_(dir_->path() + "/backing"),
      mount_(dir_->path() + "/mnt") {
  if (::mkdir(backing_.c_str(), 0755) != 0 || ::mkdir(mount_.c_str(), 0755) != 0) {
    throw std::system_error(errno, std::generic_category(), "FaultFs: mkdir");
  }
  std::string binary = binary_path();
  std::string log = dir_->path() + "/faultfs.log";
  std::vector<std::string> argv{binary, backing_, mount_, "-f"};
  if (!options.empty()) {
    argv.push_back("-o");
    argv.push_back(options);
  }
  pid_ = ::fork();
  if (pid_ < 0) throw std::system_error(errno, std::generic_category(), "FaultFs: fork");
  if (pid_ == 0) {
    // If the test dies, faultfs gets SIGTERM and unmounts instead of lingering.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    if (devnull >= 0) ::dup2(devnull, 0);
    exec_argv(argv);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    if (is_mounted(mount_)) return;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("faultfs " + options + " failed to mount (exit " +
                               std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                               "): " + read_file(log));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      reap(pid_, std::chrono::seconds(1));
      pid_ = -1;
      throw std::runtime_error("faultfs did not mount within 10 s: " + read_file(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

FaultFs::~FaultFs() {
  if (pid_ > 0) {
    if (is_mounted(mount_)) {
      auto r = run({"fusermount3", "-u", mount_}, "", std::chrono::seconds(10));
      if (r.exit_code != 0 && is_mounted(mount_)) {
        // Busy (a leaked descriptor or cwd): detach it and stop the server.
        ::umount2(mount_.c_str(), MNT_DETACH);
        ::kill(pid_, SIGTERM);
      }
    }
    reap(pid_, std::chrono::seconds(5));
  }
  // dir_ (backing + mount point) is removed by TempDir's destructor.
}

void FaultFs::control(const std::string& line) const {
  std::string path = mount_ + "/.faultfs-control";
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path);
  std::string text = line + "\n";
  ssize_t n = ::write(fd, text.data(), text.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size())) {
    throw std::runtime_error("faultfs control '" + line + "' rejected: " + std::strerror(err));
  }
}

std::string FaultFs::control_state() const { return read_file(mount_ + "/.faultfs-control"); }

std::string FaultFs::unavailable_reason() {
  static std::once_flag once;
  static std::string reason;
  std::call_once(once, [] {
    std::string binary = binary_path();
    if (::access(binary.c_str(), X_OK) != 0) {
      reason = "faultfs binary not built (" + binary + ")";
      return;
    }
    if (::access("/dev/fuse", F_OK) != 0) {
      reason = "FUSE unavailable: no /dev/fuse";
      return;
    }
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      reason = std::string("FUSE unavailable: cannot open /dev/fuse: ") + std::strerror(errno);
      return;
    }
    ::close(fd);
    if (::geteuid() != 0 && ::access("/usr/bin/fusermount3", X_OK) != 0 &&
        ::access("/bin/fusermount3", X_OK) != 0) {
      reason = "FUSE unavailable: not root and no fusermount3";
      return;
    }
    try {
      FaultFs trial;
    } catch (const std::exception& e) {
      reason = std::string("FUSE unavailable: ") + e.what();
    }
  });
  return reason;
}

}  // namespace holdfast::testing
