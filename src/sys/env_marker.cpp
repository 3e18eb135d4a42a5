#include "sys/env_marker.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string_view>

#include "sys/fd.hpp"
#include "sys/file.hpp"

namespace holdfast::sys {

namespace {
bool has_entry(std::string_view environ_block, std::string_view marker) {
  for (size_t pos = 0; pos < environ_block.size();) {
    size_t end = environ_block.find('\0', pos);
    if (end == std::string_view::npos) end = environ_block.size();
    if (environ_block.substr(pos, end - pos) == marker) return true;
    pos = end + 1;
  }
  return false;
}
}  // namespace

int kill_processes_with_env(const std::string& marker) noexcept {
  int killed = 0;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  pid_t self = ::getpid();
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid <= 0 || pid == self) continue;
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0U));
    if (pidfd < 0) continue;
    UniqueFd pin(pidfd);
    std::string path = "/proc/" + std::string(e->d_name) + "/environ";
    auto env = read_file(path, size_t{1} << 20);
    // Still alive after the read: the pid was not reused while we read it.
    if (!env || ::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0U) != 0) continue;
    if (has_entry(*env, marker) && ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0U) == 0) ++killed;
  }
  ::closedir(proc);
  return killed;
}

}  // namespace holdfast::sys
