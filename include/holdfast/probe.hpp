// holdfast::probe — measure, on a real directory, whether the filesystem's coordination
// primitives are atomic and its kernel locks are enforced.
//
// The race harness forks N workers once. Each round, every worker prepares (a temp file for link
// and rename, an open descriptor for locks), then all are released at the same instant (one
// futex word in shared memory, woken for all at once) and try the primitive once on the round's
// fresh name. A round with more than one winner is a double grant: proof the primitive is not
// safe for mutual exclusion here. Zero double grants is evidence, not proof; more rounds and more
// workers make it stronger (docs/PROBE.md).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/lock.hpp"

namespace holdfast {

// What each worker tries once per round.
enum class Primitive {
  mkdir,   // mkdir(2) of the round's name
  excl,    // open(O_CREAT|O_EXCL)
  link,    // link(2) of a private temp file to the name (the NFS dotlock)
  rename,  // renameat2(RENAME_NOREPLACE) of a private temp file onto the name
  flock,   // flock(LOCK_EX|LOCK_NB) on the round's file, held until the round ends
  ofd,     // fcntl(F_OFD_SETLK, F_WRLCK), held until the round ends
  posix,   // fcntl(F_SETLK, F_WRLCK), held until the round ends
};
std::string_view to_string(Primitive primitive) noexcept;
// Parses the names above; nullopt otherwise.
std::optional<Primitive> parse_primitive(std::string_view name) noexcept;
// Every primitive, in the order above.
const std::vector<Primitive>& all_primitives() noexcept;
// True for flock, ofd, posix.
bool is_kernel_lock(Primitive primitive) noexcept;

enum class Verdict {
  safe,         // no double grant in any round, and (locks) the semantics checks passed
  unsafe,       // a double grant, a lock that did not exclude, or unexpected errors
  unsupported,  // the filesystem refuses the primitive (EINVAL, ENOTSUP, ENOSYS, EPERM, ENOLCK)
  inconclusive, // not measured to the end: out of resources (ENOSPC, EDQUOT, EMFILE, ENFILE,
                // ENOMEM), read-only (EROFS) or I/O errors (EIO); says nothing about safety
};
std::string_view to_string(Verdict verdict) noexcept;  // "safe", "UNSAFE", "unsupported", "inconclusive"
// Parses "safe", "unsafe" (any case), "unsupported", "inconclusive"; nullopt otherwise.
std::optional<Verdict> parse_verdict(std::string_view name) noexcept;

// Kernel-lock semantics, each measured with real processes; nullopt if it could not be tested.
struct LockSemantics {
  std::optional<bool> excludes_other_process;  // another process is refused
  std::optional<bool> excludes_same_process;   // a second open in this process is refused
                                               // (ofd, flock: yes; posix: no, by design)
  std::optional<bool> closing_other_fd_drops;  // closing another fd of the file drops the lock
                                               // (posix: yes, the classic trap; ofd, flock: no)
  std::optional<bool> inherited_by_child;      // after fork, the child still holds it once the
                                               // parent has closed (ofd, flock: yes; posix: no)
  std::optional<bool> survives_exec;           // a child that exec'd with the descriptor still
                                               // holds it once the parent has closed (ofd, flock:
                                               // yes; posix: no). ensure and lock rely on it.
};

struct PrimitiveResult {
  Primitive primitive = Primitive::mkdir;
  Verdict verdict = Verdict::safe;
  int rounds = 0;            // rounds run
  int double_grants = 0;     // rounds with more than one winner
  int max_winners = 0;       // most winners seen in one round
  int no_winner_rounds = 0;  // rounds nobody won (a liveness problem, not a safety one)
  int errors = 0;            // attempts that failed with an unexpected errno
  int resource_errors = 0;   // attempts that failed for want of resources or with I/O errors
                             // (ENOSPC, EDQUOT, EMFILE, ENFILE, ENOMEM, EROFS, EIO)
  std::string first_error;   // e.g. "mkdir: Input/output error"
  double median_us = 0;      // latency of one attempt, all workers and rounds
  double p99_us = 0;
  std::optional<LockSemantics> semantics;  // kernel locks, when ProbeOptions::semantics
  std::string reason;        // one line: why the verdict
};

struct FilesystemInfo {
  std::string type;          // from statfs f_type: "ext4", "tmpfs", "nfs", "fuse", ...
  uint64_t magic = 0;        // statfs f_type
  std::string mount_type;    // from /proc/self/mountinfo, e.g. "fuse.faultfs", "ext4"
  std::string mount_point;
  std::string source;
  std::string options;       // per-mount and superblock options, comma-joined
  dev_t dev = 0;
};

// Reads the filesystem facts for `directory`. Throws Error if it cannot be stat'ed.
FilesystemInfo filesystem_info(const std::string& directory);

struct ProbeProgress {
  Primitive primitive;
  int round;   // rounds completed for this primitive
  int rounds;  // rounds planned
  int double_grants;
};

struct ProbeOptions {
  std::string directory = ".";
  int workers = 20;   // at least 2
  int rounds = 500;   // per primitive, at least 1
  std::vector<Primitive> primitives;  // empty: all
  bool semantics = true;              // run the kernel-lock semantics checks
  // Called from the probing thread after each round (and never concurrently).
  std::function<void(const ProbeProgress&)> progress;
};

struct ProbeReport {
  std::string directory;      // as given
  FilesystemInfo filesystem;
  int workers = 0;
  int rounds = 0;
  std::vector<PrimitiveResult> results;
  // What Backend::automatic picks for this directory (select_backend) and whether the probe
  // found that backend's primitive safe. automatic_backend is Backend::automatic when
  // select_backend refuses (no backend it can verify; automatic_reason says why).
  // automatic_safe is nullopt when the primitives behind it were not probed, or inconclusive.
  // `holdfast probe` exits 69 when it is false.
  Backend automatic_backend = Backend::ofd;
  std::string automatic_reason;
  std::optional<bool> automatic_safe;
  // The backend probe recommends from its own measurements (recommended_backend).
  std::optional<Backend> recommended;
  double elapsed_seconds = 0;

  const PrimitiveResult* find(Primitive primitive) const noexcept;
  std::string to_json() const;   // one JSON object, documented in docs/PROBE.md
  std::string to_table() const;  // the human report `holdfast probe` prints
};

// Runs the race harness (and semantics checks) in options.directory, inside a scratch
// subdirectory ".holdfast-probe.XXXX" that is removed afterwards, on every path. Forks
// options.workers processes; blocks until done. Throws Error if the directory is missing or not
// writable, or if workers cannot be started; failures of a primitive itself (its setup included)
// are reported in its result, never thrown: resource errors as Verdict::inconclusive. Each
// round's name is removed before the next round.
//
// SIGINT, SIGTERM and SIGHUP are blocked in the calling thread while it runs and checked between
// rounds: when one arrives, probe stops, removes its scratch tree, restores the signal mask (so
// the signal then takes its normal effect) and, if the process survives it, throws Error with
// exit code 128 + the signal. Block them in other threads too, or they may kill the process
// before the cleanup. Not async-signal-safe; call from a process that can fork.
ProbeReport probe(const ProbeOptions& options);

// The backend a report recommends, from its measurements alone: flock (what flock(1), python
// filelock and Go's lockedfile take, so they all exclude each other), else ofd, else link, else
// excl (only if both excl and rename are safe); nullopt if none measured safe. Implemented next to
// select_backend (src/lock/select_backend.cpp), which prefers the same order.
std::optional<Backend> recommended_backend(const ProbeReport& report);

// ---- quick check for Backend::automatic ----

struct KernelLockVerdict {
  bool tested = false;          // false: could not test (reason says why; e.g. EACCES, EROFS)
  bool ofd_excludes = false;    // a second open file description was refused an OFD write lock
  bool flock_excludes = false;  // a second open file description was refused flock(LOCK_EX)
  bool from_cache = false;             // answered from this process's or the shared store
  bool from_persistent_cache = false;  // answered from the store another process wrote
  bool on_lock_file = false;           // measured on the lock file (no scratch file allowed)
  int error_number = 0;                // !tested: errno that stopped the scratch-file test
  std::string filesystem;       // statfs type name
  std::string reason;           // one line
};

// Whether kernel locks are enforced on the filesystem holding `directory`: takes an OFD write
// lock and a flock on a scratch file through one descriptor and checks that a second, separately
// opened descriptor of the same file is refused both (no fork; a few syscalls plus creating and
// unlinking ".holdfast-lockcheck.<random>" in `directory`). Filesystems that accept locks
// without enforcing them (nolock NFS, 9p, faultfs nolocks) fail this; note that a filesystem
// enforcing locks only within this host (NFS local_lock=all) cannot be told apart from here.
//
// When no scratch file can be created there and `lock_file` is not empty, the same question is
// asked of `lock_file` itself: a shared OFD lock and a shared flock through one descriptor, and a
// second descriptor must see an exclusive lock refused (OFD GETLK; flock LOCK_EX|LOCK_NB). It
// takes only shared locks, for microseconds. tested is false only when neither can be done.
//
// Verdicts are remembered per mount (key: boot id, the mount's unique id, device, type, source
// and options; see docs/PROBE.md) in this process, where they are dropped whenever the mount
// table changes, and across processes in a store only this user or root can write; a verdict
// that cannot be trusted is ignored and the check re-run. Thread-safe; never throws (except
// std::bad_alloc).
KernelLockVerdict kernel_lock_verdict(const std::string& directory);
KernelLockVerdict kernel_lock_verdict(const std::string& directory, const std::string& lock_file);

// What `holdfast probe` measured for `primitive` on the mount holding `directory`, as remembered
// in the cross-process store (written at the end of every probe); nullopt if never probed there
// (or the store cannot be trusted). The probe's own directory-level verdicts, for a later
// process that must decide whether an explicitly chosen backend is known to be broken here.
std::optional<Verdict> stored_probe_verdict(const std::string& directory, Primitive primitive);

}  // namespace holdfast
