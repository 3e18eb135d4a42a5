// holdfast::Lock — an interprocess lock on a path, with holder records and fencing tokens.
//
// Backends:
//   ofd    open-file-description locks (fcntl F_OFD_SETLKW). The default where they work. Two
//          Lock objects in one process exclude each other (POSIX record locks would not).
//   flock  flock(2): excludes flock(1), python filelock and Go's lockedfile on the same file. Same
//          guarantees as ofd (two Lock objects in one process exclude each other, inode re-check,
//          records, tokens), and it needs no write permission: read-only files and directories
//          lock, as with flock(1).
//   excl   dotlock: the lock is a file created exclusively with its complete holder record
//          (renameat2 RENAME_NOREPLACE; O_CREAT|O_EXCL where the filesystem lacks it).
//   link   dotlock: NFS-safe unique temp file + link(2) + link-count/inode check.
//   shm    same-machine fast path: a robust process-shared mutex in a small mapping in the state
//          directory (never beside the lock file), taken without system calls when uncontended;
//          owner death is detected by the kernel and recovered. Excludes only other shm lockers
//          of the same file, in one pid namespace; owned by the thread that took it. Offers
//          LockOptions::fair. See docs/LOCKS.md, "The shm backend".
//   automatic  flock where kernel locks are enforced, else a safe fallback (see select_backend).
//
// Kernel-lock files are opened like flock(1) does and are never written, truncated, chmod'ed or
// touched: locking a script or a data file leaves it byte-for-byte and stat-for-stat as it was.
// A missing one is created empty (0666 minus umask), never through a symlink, and never unlinked
// (unlinking would let waiters split across two inodes). After locking, the descriptor's inode is
// compared with the path's, and the lock is retried if the path was replaced or deleted meanwhile.
// Their holder record and fencing state live in the state directory ($HOLDFAST_STATE_DIR, default
// /var/tmp/holdfast), keyed by the file's device, inode and birth time; nothing is created beside
// the lock file. If that directory cannot be used, the lock still works, without record or token.
//
// Dotlocks are stale only on proof of death of every process named in their record (see
// identity.hpp); a record from another host, an EPERM pid or an unreadable record means held,
// unless LockOptions::stale_after grants an explicit lease. Reclaim replaces the stale file by an
// atomic rename, guarded by a per-victim reclaim marker, so exactly one reclaimer wins and a live
// holder's file is never removed.
//
// Every exclusive grant carries a fencing token: strictly increasing per lock path across holders,
// processes, crashes and reboots (see fence.hpp in src/lock for the epoch scheme).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/identity.hpp"

namespace holdfast {

enum class Backend { automatic, ofd, flock, excl, link, shm };
enum class LockMode { exclusive, shared };
// How a grant's record tells when it was granted (HolderRecord::acquired_unix_ns).
enum class GrantTime {
  precise,  // CLOCK_REALTIME (the default)
  coarse,   // CLOCK_REALTIME_COARSE: the last timer tick, up to one jiffy (1-10 ms) early, ~5x cheaper
  none,     // not read: acquired_unix_ns is 0 ("not recorded"); the clock costs more than an shm lock
};

// When a kernel grant's holder record is written (LockOptions::record_write).
enum class RecordWrite { at_grant, at_first_added_holder };

std::string_view to_string(Backend backend) noexcept;
std::string_view to_string(LockMode mode) noexcept;
// Parses "auto", "ofd", "flock", "excl", "link", "shm"; nullopt otherwise.
std::optional<Backend> parse_backend(std::string_view name) noexcept;

// What a lock file says about the grant that wrote it. Serialised as one line of JSON.
struct HolderRecord {
  // The processes that hold the lock. The first took it; later ones inherited it (for example
  // the command `holdfast lock` runs). A dotlock is stale only when all of them are dead.
  std::vector<ProcessIdentity> processes;
  uint64_t token = 0;              // fencing token of this grant
  uint64_t nonce = 0;              // unique per grant (a handle's start at random, then consecutive)
  Backend backend = Backend::ofd;
  LockMode mode = LockMode::exclusive;
  int64_t acquired_unix_ns = 0;    // wall-clock time of the grant
  // argv of what runs under the lock, capped (see cap_command) so that a record always fits in
  // what readers read (kRecordReadLimit).
  std::vector<std::string> command;
  int64_t lease_ms = 0;            // >0: the holder refreshes mtime every lease/3 (stale_after)

  std::string to_json() const;
  // Parses a record; nullopt (never an exception) if it is not a complete, well-formed record.
  static std::optional<HolderRecord> parse(std::string_view text);
};

// Limits on what a record stores of a command line: readers read up to kRecordReadLimit bytes,
// well above the largest record a writer produces, so a long argv can never make a record
// unparseable (and a dead holder's dotlock unreclaimable).
inline constexpr size_t kRecordMaxArgBytes = 4096;
inline constexpr size_t kRecordMaxArgs = 256;
inline constexpr size_t kRecordMaxCommandBytes = size_t{64} * 1024;
inline constexpr size_t kRecordReadLimit = size_t{1024} * 1024;
inline constexpr const char* kRecordTruncatedMarker = "...(truncated by holdfast)";
// `command` cut to those limits; when anything was cut, kRecordTruncatedMarker is appended.
std::vector<std::string> cap_command(std::vector<std::string> command);

struct LockOptions {
  Backend backend = Backend::automatic;
  LockMode mode = LockMode::exclusive;  // dotlocks support exclusive only
  // Dotlocks only: a record that cannot be proven dead (another host) becomes reclaimable when its
  // file's mtime is older than this. The holder refreshes mtime every stale_after/3 from a
  // heartbeat thread. Zero (the default) means never: fail closed.
  std::chrono::milliseconds stale_after{0};
  // Recorded in the holder record; empty means this process's /proc/self/cmdline.
  std::vector<std::string> command;
  // An explicitly chosen backend that this filesystem is known (measured) to break is refused
  // with Error(exit_code::unavailable): ofd/flock where kernel_lock_verdict finds the lock not
  // enforced, and any backend whose primitive `holdfast probe` measured unsafe on this mount.
  // true: take it anyway (the caller has decided). Never affects Backend::automatic.
  bool allow_unsafe_backend = false;
  // Fair (FIFO) mode, shm backend only: waiters are granted in the order they started waiting
  // (the kernel hands the lock to the longest waiter), so no waiter is overtaken by later ones.
  // Other backends refuse it with Error(exit_code::usage) (docs/LOCKS.md says why).
  bool fair = false;
  // The time in each grant's record. The shm backend honours it (Lock and LockFile::Guard), where
  // reading CLOCK_REALTIME costs ~4x the whole uncontended lock; the other backends always record
  // the precise time (their grant is system calls that cost far more than the clock).
  GrantTime grant_time = GrantTime::precise;
  // When an exclusive kernel (ofd, flock) grant writes its holder record. at_grant: before the
  // acquire returns, naming this process. at_first_added_holder: at the first
  // Lock::add_holder_process(), naming this process and the added one, so a caller that is about
  // to start the process that will hold the lock (holdfast lock) reads the identities while that
  // process starts instead of before. Until then (and for good, if no holder is ever added) the
  // record file keeps the previous grant's record and Lock::record() names no process; the
  // token is issued at the grant either way.
  // A kernel lock's record is informative (the kernel lock is the truth: inspect_holder reports
  // the lock held throughout). Dotlocks and shm always write at the grant: their record is what
  // proves the holder alive.
  RecordWrite record_write = RecordWrite::at_grant;
};

class Lock {
 public:
  // Blocks until the lock on `path` is held in `options.mode`. On return, no other Lock on `path`
  // holds it in a conflicting mode — in this process or any other — until release() or
  // destruction in this process; for kernel backends, also until every process that inherited
  // fd() has closed it. A forked child's copy of a Lock never releases it: destroying the copy in
  // the child only closes the child's descriptor. Throws holdfast::Error if the path cannot be
  // locked (missing directory, EACCES, EROFS, a FIFO or device, a refused symlink, an unsupported
  // backend, an exclusive ofd lock on a file that cannot be opened for writing, a corrupt fence).
  static Lock acquire(const std::string& path, const LockOptions& options = {});

  // As acquire, but returns nullopt at once if another holder has it.
  static std::optional<Lock> try_acquire(const std::string& path, const LockOptions& options = {});

  // As acquire, but gives up and returns nullopt when `deadline` passes. Signals that interrupt the
  // wait (EINTR) do not end it early.
  static std::optional<Lock> acquire_until(const std::string& path, const LockOptions& options,
                                           std::chrono::steady_clock::time_point deadline);

  Lock(Lock&&) noexcept;
  Lock& operator=(Lock&&) noexcept;
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  // Releases the lock if still held, in the process that took it (errors are ignored; call
  // release() to see them).
  ~Lock();

  // Releases the lock. Kernel backends unlock and close; the file and its last record stay. A
  // dotlock file is moved aside by rename and removed only if it is still ours.
  void release();

  // Forgets the lock without releasing it: the kernel lock stays with every process that
  // inherited fd() (e.g. an exec'd command), and a dotlock stays until its holders die.
  void detach() noexcept;

  // Adds `process` to the holder record and rewrites it (e.g. the child a command runs in), so
  // that a dotlock is not judged stale while that process lives. Exclusive locks only (a no-op
  // for shared ones). Throws holdfast::Error if `process` is not verifiable() (its start time
  // or the boot id could not be read): a record must never name a process it cannot judge.
  void add_holder_process(const ProcessIdentity& process);

  const std::string& path() const noexcept;
  Backend backend() const noexcept;      // the backend actually used (never automatic)
  LockMode mode() const noexcept;
  // Fencing token; for shared locks, the last exclusive one. 0 for a kernel lock whose state
  // directory cannot be used (resources that check tokens refuse 0).
  uint64_t token() const noexcept;
  const HolderRecord& record() const noexcept;
  // The locked descriptor for kernel backends (inheritable by clearing FD_CLOEXEC; open
  // read-only, or write-only for an exclusive ofd lock); for dotlocks, the lock file holdfast
  // created, open read-write. -1 once released or detached, and always for shm (no descriptor
  // carries an shm lock).
  int fd() const noexcept;
  bool held() const noexcept;

  struct State;  // implementation detail

 private:
  friend class LockFile;
  explicit Lock(std::unique_ptr<State> state) noexcept;
  std::unique_ptr<State> state_;
};

// An open lock path, for taking the same lock many times without reopening its files (the lock
// file for kernel backends, and the fencing-token file). Same exclusion contracts as Lock's static
// functions, and one grant at a time: while a Lock taken through it is alive, try_acquire and
// acquire_until return nullopt at once and acquire throws (a second lock on the same open file
// description would be granted silently, and releasing either would free both). A Lock taken
// through a LockFile shares its files and may outlive it. The backend is resolved once, at
// open(). Not for concurrent use by several threads at once; use one LockFile per thread (they
// exclude each other like separate processes).
class LockFile {
 public:
  class Guard;
  // Resolves the backend and checks the directory; files are opened on first acquisition.
  // Throws holdfast::Error as Lock::acquire does.
  static LockFile open(const std::string& path, const LockOptions& options = {});

  Lock acquire();
  std::optional<Lock> try_acquire();
  std::optional<Lock> acquire_until(std::chrono::steady_clock::time_point deadline);

  Backend backend() const noexcept;
  const std::string& path() const noexcept;

  LockFile(LockFile&&) noexcept;
  LockFile& operator=(LockFile&&) noexcept;
  ~LockFile();

 private:
  struct Impl;
  explicit LockFile(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

// A scoped exclusive grant through a LockFile, for hot loops: the constructor blocks until the
// lock is held (as LockFile::acquire), the destructor releases it. Same exclusion, fencing token
// (strictly increasing across guards and Locks of the same path), holder record (what
// read_holder_record and `holdfast holder` show) and owner-death recovery as a Lock. It lives on
// the stack of the thread that took it — it cannot be moved, copied or allocated with new — and
// must not outlive its LockFile. One grant at a time per LockFile: constructing a Guard while a
// Lock or Guard taken through the same LockFile is alive throws holdfast::Error (70), as
// LockFile::acquire does; a thread that already holds the lock through another handle gets an
// Error too (it would wait on itself forever). A forked child's copy of a Guard never releases
// the parent's lock.
//
// On the shm backend (exclusive mode) it is the fast path: no allocation, no grant object, no
// system call when uncontended — the gate, the token, and the record slot's per-grant fields
// (token, nonce, LockOptions::grant_time), the rest of the record being written only when the slot
// no longer holds this handle's last one. Its record's nonce is derived from the token (unique per
// grant, as the token is). On ofd and flock (exclusive mode, the record written at the grant) it
// makes a Lock's system calls and writes the same record, without a grant object: no allocation,
// no reference count. Everywhere else (dotlocks, shared mode, RecordWrite::at_first_added_holder)
// it holds a Lock from LockFile::acquire(), so code written against it works with every backend.
class LockFile::Guard {
 public:
  // Throws holdfast::Error as LockFile::acquire does.
  explicit Guard(LockFile& file);
  // Releases the lock (errors are ignored, as ~Lock does).
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  Guard(Guard&&) = delete;
  Guard& operator=(Guard&&) = delete;
  static void* operator new(size_t) = delete;
  static void* operator new[](size_t) = delete;

  // This grant's fencing token.
  uint64_t token() const noexcept { return token_; }

 private:
  Impl* impl_;
  std::optional<Lock> lock_;  // where the fast path does not apply
  uint64_t token_ = 0;
};

// ---- reading a lock without taking it ----

enum class HolderState {
  free,   // nobody holds it (no kernel lock; no dotlock file)
  held,   // a holder is verified alive, or cannot be proven dead (fail closed)
  stale,  // dotlock whose every holder is proven dead (or whose lease expired)
};

struct HolderInfo {
  HolderState state = HolderState::free;
  Backend backend = Backend::ofd;         // what kind of lock file `path` is (best judgment)
  std::optional<HolderRecord> record;     // the last record written, if readable
  bool record_corrupt = false;            // a file exists but its record does not parse
  bool kernel_lock_held = false;          // /proc/locks shows a lock on the file's inode
  std::vector<std::string> kernel_lock_kinds;  // e.g. "OFDLCK WRITE", "FLOCK READ"
  std::string reason;                     // one line: why state is what it is
};

// Reads the holder record of `path` without taking the lock: a dotlock's own content, or a kernel
// lock's record in the state directory. nullopt if there is no complete record. Throws
// holdfast::Error only for unexpected I/O errors.
std::optional<HolderRecord> read_holder_record(const std::string& path);

// Reports who holds `path` (a file or a directory): the record, whether a kernel lock on its
// inode is really held (from /proc/locks, as lslocks(8) reads it — also locks taken by flock(1)
// or any other program, with no record), and — for dotlocks — whether it is stale. Reads at most
// the first bytes of a file that is not a holdfast record, with O_NOATIME where permitted.
HolderInfo inspect_holder(const std::string& path);

// The backend `automatic` picks for locks in `directory`, and why. Never returns automatic.
struct BackendChoice {
  Backend backend;
  std::string reason;
};
BackendChoice select_backend(const std::string& directory);
// As above for the lock file `lock_file` in `directory`: where no scratch file can be created in
// `directory`, enforcement is measured on `lock_file` itself; where nothing can be measured,
// throws Error(exit_code::unavailable) rather than guess (see docs/LOCKS.md, "Choosing a backend").
BackendChoice select_backend(const std::string& directory, const std::string& lock_file);

}  // namespace holdfast
