// Process identity and proof of death.
//
// A pid alone names nothing durable: pids are recycled, machines reboot, and a file may be read
// from another host or another pid/time namespace. holdfast identifies a process by pid + start
// time + boot id + host (+ the pid and time namespaces it was read in), and declares it dead only
// on proof. Anything it cannot verify is treated as alive ("fail closed").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace holdfast {

struct ProcessIdentity {
  pid_t pid = 0;
  uint64_t start_time = 0;  // /proc/PID/stat field 22: clock ticks after boot
  std::string boot_id;      // /proc/sys/kernel/random/boot_id; empty if it could not be read
  std::string host;         // gethostname(2)
  // Inodes of /proc/PID/ns/pid and /proc/PID/ns/time when the identity was read; 0 = not
  // recorded (older records, or unreadable). The pid is only meaningful in its pid namespace, and
  // the start time is shifted by a time namespace's boottime offset.
  uint64_t pid_ns = 0;
  uint64_t time_ns = 0;
  // /etc/machine-id when the identity was read; empty = not recorded (older records) or
  // unreadable. Host names collide (cloned VMs, "localhost"); a record from "this host name"
  // with another machine id was written by another machine, whose boot id proves nothing here.
  std::string machine_id{};

  bool operator==(const ProcessIdentity&) const = default;

  // True if everything liveness needs was read: a pid, a start time and a boot id. An identity
  // that is not verifiable can never be proven dead, so a lock recorded with it is held until
  // someone removes it by hand (or a lease expires).
  bool verifiable() const noexcept { return pid > 0 && start_time != 0 && !boot_id.empty(); }
};

// This machine's boot id (empty if /proc/sys/kernel/random/boot_id cannot be read, e.g. under
// systemd's ProcSubset=pid) and host name. Read once, cached.
const std::string& this_boot_id();
const std::string& this_host();
// This machine's /etc/machine-id (trimmed); empty if it cannot be read. Read once, cached.
const std::string& this_machine_id();

// The identity of the calling process. If /proc cannot be read, the result is not verifiable()
// (start time 0 or empty boot id): records naming it are then held, never judged dead.
ProcessIdentity self_identity();

// The verifiable identity of a live local process; nullopt if it does not exist, has exited (a
// zombie whose threads have all exited), or its start time or this machine's boot id cannot be
// read. Callers that must name a process in a record (holdfast lock's command) refuse to go on
// when this is nullopt.
std::optional<ProcessIdentity> identity_of(pid_t pid);

// identity_of() for a child this process has just forked (fork, vfork, or clone without
// CLONE_NEWPID/CLONE_NEWTIME), called while this process has not changed the namespaces its
// children get (unshare or setns of pid or time; holdfast never does). Such a child is in this
// process's pid and time namespaces, and the pid fork returned and the start time read from
// /proc are in them too, so both are taken from self_identity(): only the child's start time is
// read, from /proc or, when `fork` brackets it to one clock tick, from the bracket (holdfast lock
// names its command this way, at every run).
class ForkBracket;
std::optional<ProcessIdentity> identity_of_forked_child(pid_t child, const ForkBracket& fork);

// The start time of a child without reading /proc. /proc/PID/stat gives it in clock ticks
// (sysconf(_SC_CLK_TCK), 100 a second) of CLOCK_BOOTTIME as fork took it, shifted by the reader's
// time namespace as this process's clock is. A ForkBracket reads the clock when constructed, just
// before fork or vfork, and again in close(), just after fork returned in the parent: the child's
// start lies between the two, so when both fall in one tick that tick is its start time (about
// 97 forks in 100 when the fork takes ~0.3 ms). Otherwise start_time() is nullopt and /proc is
// read. Construct and close it in the forking thread.
class ForkBracket {
 public:
  ForkBracket() noexcept;
  void close() noexcept;
  std::optional<uint64_t> start_time() const noexcept;

 private:
  bool valid_ = false;   // both readings converted exactly (declared first: before_ sets it)
  uint64_t before_ = 0;  // ticks, as /proc counts them
  uint64_t after_ = 0;
  bool closed_ = false;
};

enum class Liveness {
  alive,    // verified: same host, same boot, pid exists with the recorded start time
  dead,     // proven: rebooted, pid gone or exited (zombie with no live thread), or pid reused
  unknown,  // cannot be verified (other host, other pid/time namespace, EPERM, hidden or
            // unreadable /proc, unverifiable record): callers must treat as alive
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
    // zombie: the whole thread group has exited. A leader that called pthread_exit() while other
    // threads run shows state Z in /proc/PID/stat but is `running` here.
    enum class State { running, zombie, missing, unreadable } state;
    uint64_t start_time = 0;
    int error = 0;  // errno when unreadable
    // The parent pid from the same read as start_time, when the process (its leader) has not
    // exited; 0 if unknown (a table that does not read it, or a leader shown as a zombie).
    pid_t parent = 0;
  };
  virtual Entry lookup(pid_t pid) const = 0;
  // kill(pid, 0): 0, or -errno (-ESRCH: no such process, -EPERM: exists, not ours).
  virtual int signal_probe(pid_t pid) const = 0;
  virtual const std::string& boot_id() const = 0;  // empty: unknown
  virtual const std::string& host() const = 0;
  // The reader's machine id (empty: unknown). Defaults to this_machine_id().
  virtual const std::string& machine_id() const;
  // The reader's own pid and time namespace inodes (0: unknown). Defaults read /proc/self/ns.
  virtual uint64_t pid_ns() const;
  virtual uint64_t time_ns() const;
};

// The real /proc-backed table.
const ProcessTable& system_process_table();

// Judges whether the recorded process still runs. Dead only on proof: another boot id on this
// host (same host name, and the same machine id when the record has one), the pid absent (both /proc and kill(2) agree) or exited, or the pid alive with a
// different start time. Unknown: another host, or a record from this host name whose machine
// id differs from the reader's (or the reader's cannot be read); another pid or time namespace than the reader's;
// a record or a reader that lacks its boot id or start time; EPERM; an unreadable /proc entry.
LivenessVerdict judge_liveness(const ProcessIdentity& recorded,
                               const ProcessTable& table = system_process_table());

}  // namespace holdfast
