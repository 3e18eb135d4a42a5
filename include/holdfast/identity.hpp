// Process identity and proof of death.
//
// A pid alone names nothing durable: pids are recycled, machines reboot, and a file may be read
// from another host. holdfast identifies a process by pid + start time + boot id + host, and
// declares it dead only on proof. Anything it cannot verify is treated as alive ("fail closed").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace holdfast {

struct ProcessIdentity {
  pid_t pid = 0;
  uint64_t start_time = 0;  // /proc/PID/stat field 22: clock ticks after boot
  std::string boot_id;      // /proc/sys/kernel/random/boot_id
  std::string host;         // gethostname(2)

  bool operator==(const ProcessIdentity&) const = default;
};

// This machine's boot id and host name (read once, cached).
const std::string& this_boot_id();
const std::string& this_host();

// The identity of the calling process.
ProcessIdentity self_identity();

// The identity of a live local process, or nullopt if it does not exist (or is a zombie) or its
// /proc entry cannot be read.
std::optional<ProcessIdentity> identity_of(pid_t pid);

enum class Liveness {
  alive,    // verified: same host, same boot, pid exists with the recorded start time
  dead,     // proven: rebooted, pid gone or zombie, or pid reused (other start time)
  unknown,  // cannot be verified (other host, EPERM, hidden /proc): callers must treat as alive
};

struct LivenessVerdict {
  Liveness liveness;
  std::string reason;  // one human-readable line, e.g. "pid 42 was reused (start time 10 != 99)"
};

// What the judgment needs from the system; replaceable in tests to simulate hidden /proc, EPERM, etc.
class ProcessTable {
 public:
  virtual ~ProcessTable() = default;
  struct Entry {
    enum class State { running, zombie, missing, unreadable } state;
    uint64_t start_time = 0;
    int error = 0;  // errno when unreadable
  };
  virtual Entry lookup(pid_t pid) const = 0;
  // kill(pid, 0): 0, or -errno (-ESRCH: no such process, -EPERM: exists, not ours).
  virtual int signal_probe(pid_t pid) const = 0;
  virtual const std::string& boot_id() const = 0;
  virtual const std::string& host() const = 0;
};

// The real /proc-backed table.
const ProcessTable& system_process_table();

// Judges whether the recorded process still runs. Dead only on proof: another boot id on this
// host, the pid absent (both /proc and kill(2) agree) or a zombie, or the pid alive with a
// different start time. Other host, EPERM, or an unreadable /proc entry: unknown.
LivenessVerdict judge_liveness(const ProcessIdentity& recorded,
                               const ProcessTable& table = system_process_table());

}  // namespace holdfast
