// Readiness bound to one start: probes for tcp/unix/file conditions that only count what the
// instance itself created, and the sd_notify socket that only listens to the instance.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"
#include "sys/fd.hpp"

namespace holdfast::ensure_detail {

// Observes a tcp:, unix: or file: condition for the instance under `supervisor`.
//   tcp:HOST:PORT  HOST is resolved once (again at most once a second while it fails), a connect
//                  succeeds, and the listening socket on PORT belongs to a process of the
//                  instance (its inode is among their /proc/PID/fd). If some process of the
//                  instance cannot be inspected (not dumpable, another user), the connect alone
//                  decides: documented in ENSURE.md.
//   unix:PATH      a connect succeeds and the listening socket bound at PATH belongs to the
//                  instance (by inode, as above).
//   file:PATH      PATH exists and was modified at or after `not_before_ns` (CLOCK_REALTIME,
//                  taken with the coarse clock file timestamps use, before the daemon was spawned).
class ReadinessProbe {
 public:
  ReadinessProbe(ReadySpec spec, pid_t supervisor, int64_t not_before_ns);
  bool ready();

 private:
  bool tcp_connects();
  ReadySpec spec_;
  pid_t supervisor_;
  int64_t not_before_ns_;
  std::vector<sockaddr_storage> addresses_;
  std::vector<socklen_t> lengths_;
  int64_t resolved_at_ns_ = 0;
};

// CLOCK_REALTIME_COARSE in nanoseconds: never later than a file timestamp set afterwards.
int64_t coarse_realtime_ns() noexcept;

// The sd_notify datagram socket for one start. Bound in a fresh private directory (mkdtemp
// under /tmp, else /dev/shm, else `fallback_dir` — the first writable one where the path fits
// sun_path, whatever the state directory's length; never the abstract namespace). The directory is 0711 and the socket 0666, so a daemon that drops
// privileges can still notify (as with systemd's socket); what protects it is the credential
// check: every datagram must carry SCM_CREDENTIALS of a process of the instance.
//
// `marker` (the instance's NAME.notify in the state directory) holds the path of the directory
// bound last for the instance. A supervisor that was SIGKILLed cannot remove its directory, so
// the next one does: a fresh NotifySocket first removes the directory the marker names (only a
// holdfast-notify.* directory owned by us: its socket, then the directory if it is empty). Its
// caller must hold the instance (no other supervisor of it runs). The destructor removes the
// directory and, if it still names ours, the marker.
class NotifySocket {
 public:
  // Throws Error naming the directory.
  NotifySocket(const std::string& fallback_dir, std::string marker);
  // Binds anew the socket at `path` (DIR/notify, DIR a holdfast-notify.* directory) that a
  // supervisor which is gone was listening on, for the daemon it left running still sends there:
  // DIR is recreated if it was removed, and must be a directory owned by us. Throws Error.
  struct TakeOver {
    std::string path;
  };
  NotifySocket(const TakeOver& old, std::string marker);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  int fd() const noexcept { return fd_.get(); }
  const std::string& path() const noexcept { return path_; }

  struct Message {
    pid_t sender = 0;
    bool ready = false;
    bool has_status = false;
    std::string status;
    pid_t main_pid = 0;  // MAINPID=, 0 if absent
    bool watchdog = false;          // WATCHDOG=1 (holdfast supervise --watchdog)
    bool watchdog_trigger = false;  // WATCHDOG=trigger: the daemon asks to be restarted
  };
  // Drains pending datagrams. Those without credentials or from a process that is not a
  // descendant of `supervisor` are dropped; `rejected` counts them (for the log).
  // `adopted` (if not 0) is a main process adopted from an earlier supervisor, not our descendant:
  // it and its descendants are accepted too.
  std::vector<Message> receive(pid_t supervisor, int& rejected, pid_t adopted = 0);

 private:
  void bind_socket();  // binds path_ (SO_PASSCRED, mode 0666); throws Error
  void write_marker() const noexcept;  // best effort: a lost marker costs only a left-over directory
  sys::UniqueFd fd_;
  std::string dir_;
  std::string path_;
  std::string marker_;
};

}  // namespace holdfast::ensure_detail
