// Pieces of starting and watching a daemon that ensure's supervisor (src/ensure/supervisor.cpp)
// and holdfast supervise (src/supervise/supervisor.cpp) share: one implementation each.
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ensure/internal.hpp"

extern char** environ;

namespace holdfast::ensure_detail {

std::vector<std::string> daemon_environment(const std::vector<std::string>& extra,
                                            std::span<const std::string_view> also_strip) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("NOTIFY_SOCKET=") || v.starts_with("HOLDFAST_INSTANCE")) continue;
    if (std::ranges::any_of(also_strip, [&](std::string_view prefix) { return v.starts_with(prefix); })) continue;
    env.emplace_back(v);
  }
  for (const auto& e : extra) {
    // A later KEY=VALUE replaces an inherited KEY.
    auto key = e.substr(0, e.find('=') + 1);
    std::erase_if(env, [&](const std::string& have) { return have.starts_with(key); });
    env.push_back(e);
  }
  return env;
}

std::string absolute(const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  char cwd[4096];
  if (::getcwd(cwd, sizeof cwd) == nullptr) throw Error(errno, path, "cannot resolve path");
  return std::string(cwd) + "/" + path;
}

bool read_ready_pipe(sys::UniqueFd& ready_r) {
  char buf[256];
  ssize_t n = ::read(ready_r.get(), buf, sizeof buf);
  if (n > 0) return std::memchr(buf, '\n', static_cast<size_t>(n)) != nullptr;
  if (n == 0) ready_r.reset();  // every writer closed it without a newline
  return false;
}

sys::UniqueFd supervisor_signal_fd() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, control_signal()}) sigaddset(&set, sig);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return sys::UniqueFd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
}

std::string rejected_notifications(int rejected) {
  return "ignored " + std::to_string(rejected) + " notification(s) from processes outside the instance";
}

}  // namespace holdfast::ensure_detail
