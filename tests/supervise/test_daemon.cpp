// A small daemon for the supervise tests, built into the test executable: when the executable
// runs with HF_SUPERVISED=MODE it acts as the daemon from a global constructor and never reaches
// GoogleTest.
//
//   HF_SUPERVISED   serve   append "PID MONOTONIC_NS" to HF_COUNT_FILE, report ready, run forever
//                   crash   append, then exit 3 at once — unless HF_HOLD_FILE exists: then run
//                           HF_HOLD_MS first (a healthy run), then exit 3
//   HF_READY        notify: send READY=1 on $NOTIFY_SOCKET (default: none)
//   HF_PING         1: send WATCHDOG=1 every WATCHDOG_USEC/4 while HF_MUTE_FILE does not exist
//                   (and only if WATCHDOG_PID is this process, as sd_watchdog_enabled(3) checks)
//   HF_HEARTBEAT    touch this file every 50 ms
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool exists(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0;
}

void append_start(const std::string& path) {
  if (path.empty()) return;
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  char line[64];
  int n = std::snprintf(line, sizeof line, "%d %lld\n", static_cast<int>(::getpid()),
                        static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec);
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (::write(fd, line, static_cast<size_t>(n)) < 0) std::perror("append");
  ::close(fd);
}

void sd_notify(const std::string& message) {
  std::string where = env("NOTIFY_SOCKET");
  if (where.empty()) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (where.size() >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, where.data(), where.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where.size() + 1);
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ::sendto(s, message.data(), message.size(), 0, reinterpret_cast<sockaddr*>(&addr), len);
  ::close(s);
}

// Creates `path` once (the tests wait for it: "a ping was sent with the right WATCHDOG_PID").
void touch_once(const std::string& path) {
  static bool done = false;
  if (done || path.empty()) return;
  done = true;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
}

[[noreturn]] void run(const std::string& mode) {
  ::alarm(300);  // never outlive a broken test run by much
  append_start(env("HF_COUNT_FILE"));
  if (mode == "crash") {
    if (exists(env("HF_HOLD_FILE"))) ::usleep(static_cast<useconds_t>(std::atoi(env("HF_HOLD_MS").c_str())) * 1000);
    ::_exit(3);
  }
  if (env("HF_READY") == "notify") sd_notify("READY=1\nSTATUS=serving\n");
  const bool ping = env("HF_PING") == "1" && env("WATCHDOG_PID") == std::to_string(::getpid());
  long long usec = std::atoll(env("WATCHDOG_USEC").c_str());
  const std::string heartbeat = env("HF_HEARTBEAT");
  const std::string mute = env("HF_MUTE_FILE");
  for (;;) {
    if (ping && usec > 0 && !exists(mute)) {
      sd_notify("WATCHDOG=1\n");
      touch_once(env("HF_PINGED_FILE"));
    }
    if (!heartbeat.empty()) {
      int fd = ::open(heartbeat.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) ::close(fd);
      ::utimensat(AT_FDCWD, heartbeat.c_str(), nullptr, 0);
    }
    if (!ping && heartbeat.empty()) {
      ::pause();
      continue;
    }
    long long step = ping && usec > 0 ? usec / 4 : 50000;
    ::usleep(static_cast<useconds_t>(std::min(step, 50000LL)));
  }
}

__attribute__((constructor)) void maybe_run() {
  const char* mode = std::getenv("HF_SUPERVISED");
  if (mode != nullptr && *mode != '\0') run(mode);
}

}  // namespace
