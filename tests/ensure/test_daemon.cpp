// A small daemon for the ensure and supervise tests, built into both test executables: when the
// executable runs with HOLDFAST_TEST_DAEMON=MODE (ensure) or HF_SUPERVISED=MODE (supervise) it acts
// as the daemon from a global constructor and never reaches GoogleTest. Tests start it as
// {exe, ...} with the mode in the environment.
//
// Environment:
//   HOLDFAST_TEST_DAEMON   serve | die | never | doublefork | doublefork-close | closefds |
//                          ignore-term | forks-worker | crash-leaving-child | dropprivs |
//                          nondumpable | chatty
//   HF_SIGNAL_FILE         every SIGHUP appends "HUP" here (the daemon keeps running)
//   HF_DESCRIBE_FILE       "cwd umask uid $HF_FOO" written at start
//   HF_COUNT_FILE          append "PID\n" here on start (counts starts)
//   HF_READY_MARKER        created just before readiness is signalled
//   HF_READY               none | notify | fd:N | file:PATH | unix:PATH | tcp:PORT
//   HF_DELAY_MS            sleep this long before signalling readiness (default 20)
//
// Supervise (HF_SUPERVISED):
//   HF_SUPERVISED   serve   append "PID MONOTONIC_NS" to HF_COUNT_FILE, report ready, run forever
//                   crash   append, then exit 3 at once — unless HF_HOLD_FILE exists: then run
//                           HF_HOLD_MS first (a healthy run), then exit 3
//   HF_READY        notify: send READY=1 on $NOTIFY_SOCKET (default: none)
//   HF_PING         1: send WATCHDOG=1 every WATCHDOG_USEC/4 while HF_MUTE_FILE does not exist
//                   (and only if WATCHDOG_PID is this process, as sd_watchdog_enabled(3) checks);
//                   HF_PINGED_FILE is created after the first ping
//   HF_HEARTBEAT    touch this file every 50 ms
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
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

void append_line(const std::string& path, const std::string& line) {
  if (path.empty()) return;
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) < 0) std::perror("append");
  ::close(fd);
}

void touch(const std::string& path) {
  if (path.empty()) return;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);  // as touch(1): an existing file gets "now"
}

// sd_notify(3), written out: one datagram to $NOTIFY_SOCKET ('@' = abstract namespace).
void sd_notify(const std::string& message) {
  std::string where = env("NOTIFY_SOCKET");
  if (where.empty()) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (where.size() >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, where.data(), where.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where.size());
  if (where[0] == '@') addr.sun_path[0] = '\0';
  else len += 1;
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ::sendto(s, message.data(), message.size(), 0, reinterpret_cast<sockaddr*>(&addr), len);
  ::close(s);
}

int listen_on(const std::string& ready) {
  if (ready.rfind("unix:", 0) == 0) {
    int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = ready.substr(5);
    std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof addr.sun_path - 1));
    ::unlink(path.c_str());
    ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(s, 128);
    return s;
  }
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(ready.substr(4).c_str())));
  ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::listen(s, 128);
  return s;
}

void signal_ready() {
  std::string ready = env("HF_READY");
  touch(env("HF_READY_MARKER"));
  if (ready == "notify") {
    sd_notify("STATUS=serving\nMAINPID=" + std::to_string(::getpid()) + "\nREADY=1\n");
  } else if (ready.rfind("fd:", 0) == 0) {
    int fd = std::atoi(ready.substr(3).c_str());
    if (::write(fd, "\n", 1) < 0) std::perror("ready fd");
    ::close(fd);
  } else if (ready.rfind("file:", 0) == 0) {
    touch(ready.substr(5));
  } else if (ready.rfind("unix:", 0) == 0 || ready.rfind("tcp:", 0) == 0) {
    listen_on(ready);  // kept open for the daemon's life
  }
}

[[noreturn]] void serve_forever() {
  for (;;) ::pause();
}

void on_hup(int) {
  static const char line[] = "HUP\n";
  const char* path = std::getenv("HF_SIGNAL_FILE");
  if (path == nullptr || *path == '\0') return;
  int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (::write(fd, line, sizeof line - 1) < 0) ::_exit(9);
  ::close(fd);
}

void describe() {
  std::string path = env("HF_DESCRIBE_FILE");
  if (path.empty()) return;
  char cwd[4096] = "?";
  if (::getcwd(cwd, sizeof cwd) == nullptr) std::strcpy(cwd, "?");
  mode_t mask = ::umask(0);
  ::umask(mask);
  char text[4400];
  std::snprintf(text, sizeof text, "%s %04o %d %s", cwd, static_cast<unsigned>(mask), static_cast<int>(::getuid()),
                env("HF_FOO").c_str());
  append_line(path, text);
}

[[noreturn]] void run_daemon(const std::string& mode) {
  ::alarm(120);  // never outlive a broken test run by much
  ::signal(SIGHUP, on_hup);
  describe();
  if (mode == "dropprivs") {
    // As root-started daemons do before they notify (C6). The readiness marker must stay
    // creatable: the tests make its directory writable.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(70);
  }
  if (mode == "nondumpable") ::prctl(PR_SET_DUMPABLE, 0);  // as ssh-agent does (C8)
  if (mode == "chatty") {
    // Writes ~64 KiB to stdout in 1 KiB lines, for log rotation.
    std::string line(1023, 'x');
    line += '\n';
    for (int i = 0; i < 64; ++i) {
      if (::write(1, line.data(), line.size()) < 0) break;
    }
  }
  int delay = env("HF_DELAY_MS").empty() ? 20 : std::atoi(env("HF_DELAY_MS").c_str());
  if (mode == "die") {
    append_line(env("HF_COUNT_FILE"), std::to_string(::getpid()));
    for (int i = 1; i <= 25; ++i) std::printf("log line %d\n", i);
    std::fflush(stdout);
    ::usleep(static_cast<useconds_t>(delay) * 1000);
    ::_exit(3);
  }
  if (mode == "doublefork" || mode == "doublefork-close") {
    const pid_t first = ::getpid();
    pid_t child = ::fork();
    if (child != 0) ::_exit(0);  // the first process exits at once, as a classic daemon does
    // Go on only once it is gone, so "the first process exited before ready" is what the tests
    // see even where exiting is slow (sanitizer runtimes).
    while (::getppid() == first) ::usleep(1000);
    ::setsid();
    // daemon(3)-style: a second fork, so the daemon is not a session leader either.
    if (::fork() != 0) ::_exit(0);
  }
  if (mode == "doublefork-close" || mode == "closefds") {
    // sshd-style closefrom(3): every inherited descriptor above stderr goes. The readiness
    // descriptor (fd:N) is the only one a daemon that wants to report would keep; these don't.
    ::close_range(3, ~0U, 0);
  }
  if (mode == "forks-worker" || mode == "crash-leaving-child") {
    // A worker that stays after its parent: it must be stopped with the instance (C2), and must
    // never be adopted as the instance when its parent crashes (C3).
    pid_t worker = ::fork();
    if (worker == 0) {
      append_line(env("HF_WORKER_FILE"), std::to_string(::getpid()));
      serve_forever();
    }
  }
  append_line(env("HF_COUNT_FILE"), std::to_string(::getpid()));
  if (mode == "ignore-term") ::signal(SIGTERM, SIG_IGN);
  if (mode == "never") serve_forever();
  ::usleep(static_cast<useconds_t>(delay) * 1000);
  signal_ready();
  if (mode == "crash-leaving-child") {
    ::usleep(static_cast<useconds_t>(delay) * 1000);
    ::abort();
  }
  serve_forever();
}

bool exists(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0;
}

[[noreturn]] void run_supervised(const std::string& mode) {
  ::alarm(300);  // never outlive a broken test run by much
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  append_line(env("HF_COUNT_FILE"), std::to_string(::getpid()) + " " +
                                        std::to_string(static_cast<long long>(now.tv_sec) * 1000000000LL + now.tv_nsec));
  if (mode == "crash") {
    if (exists(env("HF_HOLD_FILE"))) ::usleep(static_cast<useconds_t>(std::atoi(env("HF_HOLD_MS").c_str())) * 1000);
    ::_exit(3);
  }
  if (env("HF_READY") == "notify") sd_notify("READY=1\nSTATUS=serving\n");
  const bool ping = env("HF_PING") == "1" && env("WATCHDOG_PID") == std::to_string(::getpid());
  const long long usec = std::atoll(env("WATCHDOG_USEC").c_str());
  const std::string heartbeat = env("HF_HEARTBEAT");
  const std::string mute = env("HF_MUTE_FILE");
  bool pinged = false;
  if (!(ping && usec > 0) && heartbeat.empty()) serve_forever();
  for (;;) {
    if (ping && usec > 0 && !exists(mute)) {
      sd_notify("WATCHDOG=1\n");
      // The tests wait for this file: "a ping was sent with the right WATCHDOG_PID".
      if (!pinged) touch(env("HF_PINGED_FILE"));
      pinged = true;
    }
    touch(heartbeat);
    const long long step = ping && usec > 0 ? usec / 4 : 50000;
    ::usleep(static_cast<useconds_t>(std::min(step, 50000LL)));
  }
}

__attribute__((constructor)) void maybe_run_daemon() {
  const char* mode = std::getenv("HOLDFAST_TEST_DAEMON");
  if (mode != nullptr && *mode != '\0') run_daemon(mode);
  const char* supervised = std::getenv("HF_SUPERVISED");
  if (supervised != nullptr && *supervised != '\0') run_supervised(supervised);
}

}  // namespace
