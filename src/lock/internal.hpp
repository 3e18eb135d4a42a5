// Internals shared by the lock backends. Not installed.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/lock.hpp"
#include "lock/fence.hpp"
#include "sys/fd.hpp"
#include "sys/mapping.hpp"

namespace holdfast::lock_internal {

using Clock = std::chrono::steady_clock;

// How long an acquire may wait.
struct WaitSpec {
  enum Kind { none, forever, until } kind = forever;
  Clock::time_point deadline{};
  bool expired() const { return kind == none || (kind == until && Clock::now() >= deadline); }
};

// A lock path, checked and split once.
struct Target {
  std::string path;
  std::string dir;
  std::string base;
  // O_NOFOLLOW when the directory is sticky and world-writable (like /tmp): there, anyone can
  // plant a symlink named like our lock to redirect us to a file of their choosing.
  int extra_open_flags = 0;
};

// Validates the parent directory (exists, is a directory) and decides the symlink policy.
Target resolve_target(const std::string& path);

// Throws the one-line Error for a failed open of a lock (or lock-related) file.
[[noreturn]] void throw_open_error(int err, const Target& target, const std::string& file);

// Refreshes the mtime of a dotlock every lease/3 so other hosts can tell it is alive.
class Heartbeat {
 public:
  Heartbeat(int fd, std::chrono::milliseconds lease);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// The wall clock, in nanoseconds since the epoch (a record's acquired_unix_ns).
int64_t unix_ns_now();

// A fresh record for this process (token filled in by the backend). The command is capped.
HolderRecord make_record(Backend backend, LockMode mode, const LockOptions& options);

// The record's JSON (HolderRecord::to_json) in two parts: the head holds what changes with every
// grant (token, nonce, time), the tail everything else (backend, mode, lease, processes,
// command), which a LockFile formats once and keeps (RecordCache).
void append_record_head(std::string& out, uint64_t token, uint64_t nonce, int64_t acquired_unix_ns);
// The digits of a head's token, nonce and time above their last eight, as last formatted: they
// change once in 10^8 grants (token, a RecordCache's nonce) and every 100 ms, so a repeated grant
// formats only the last eight.
struct RecordHeadCache {
  struct High {
    uint64_t value = UINT64_MAX;  // no value has this high part
    size_t size = 0;
    char text[24];  // at most 12 digits, and room to format them eight at a time
  };
  High token;
  High nonce;
  High time;
};
// The width of a head's token: its digits, padded with spaces, so that issuing it (a dotlock
// appears with token 0) rewrites no byte but its own (see format_record_head).
inline constexpr size_t kTokenWidth = 20;  // the digits of UINT64_MAX
// The head formatted at `out`, which has room for kRecordHeadRoom bytes; returns its length.
// `cache`, when given, is used and updated (one cache per formatting thread).
inline constexpr size_t kRecordHeadRoom = 128;
size_t format_record_head(char* out, uint64_t token, uint64_t nonce, int64_t acquired_unix_ns,
                          RecordHeadCache* cache = nullptr);
void append_record_tail(std::string& out, const HolderRecord& record);

// A LockFile's record between grants, so that a repeated grant formats only the head and
// allocates nothing: the tail as formatted, and the HolderRecord itself, handed back by the
// grant that used it when that grant ends. Everything here belongs to the process that made it
// (a forked child starts afresh). Thread-safe: a grant may end on another thread than the one
// that takes the next. No mutex: the spare is claimed with one atomic exchange (a grant's
// take and give_back are each one claim, held for a move), because a grant on a fast backend
// (shm) costs less than two mutex round trips.
class RecordCache {
 public:
  RecordCache() = default;
  RecordCache(const RecordCache&) = delete;
  RecordCache& operator=(const RecordCache&) = delete;
  // A record for a new grant, token 0, fresh nonce and time: the cached one when this process
  // made it, else make_record's (whose tail is then cached).
  HolderRecord take(Backend backend, LockMode mode, const LockOptions& options);
  // Hands back a record take() returned, if its invariant part is still the cached one
  // (`unchanged`: no process was added to it).
  void give_back(HolderRecord&& record, bool unchanged) noexcept;
  // Writes `record` (from take(), unchanged) as write_record does, formatting only the head.
  int write(int fd, const HolderRecord& record, off_t& file_size);
  // The text write() would write (padded to `file_size`), in a buffer valid until the next call.
  const std::string& format(const HolderRecord& record, off_t file_size);
  // Stores that text at `out` (a shared mapping of the record file) when it is exactly `size`
  // bytes once padded, i.e. the record is not longer than the file; false (nothing stored)
  // otherwise. Formats only the head, straight into `out`: no buffer, no allocation.
  bool store(const HolderRecord& record, char* out, size_t size);

  // The cache's own record for a grant, lent without a copy or a move, or null while it is
  // still lent to a grant that has not ended (the caller then take()s one of its own). The loan
  // is one atomic exchange. The record is this process's make_record (remade after a fork),
  // token 0, a fresh nonce, and the acquired time of its previous grant: the borrower sets token
  // and time when it is granted. While it has no added processes, write(), format() and store()
  // format only its head. It may add processes; the next loan drops them. Throws as
  // make_record does.
  HolderRecord* lend(Backend backend, LockMode mode, const LockOptions& options);
  // Ends the loan lend() made; any thread (a grant may end on another one).
  void end_loan() noexcept { on_loan_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> on_loan_{false};
  HolderRecord lent_;  // lend()'s record, owned by the borrower while on_loan_
  // Formats the tail of `record`, this process's make_record, as the cached one.
  void cache_tail(const HolderRecord& record, pid_t self);
  // Claims pid_, tail_ and spare_ for the calling thread, which holds the claim for one move or
  // one formatting of the tail (another thread waits, yielding). Like the mutex it replaces, a
  // claim held by another thread when the process forks is never released in the child.
  void claim() noexcept;
  void unclaim() noexcept { claimed_.store(false, std::memory_order_release); }
  std::atomic<bool> claimed_{false};
  // A grant's nonce: unique per grant, from a random start per RecordCache and process, then
  // consecutive, so that a repeated grant formats only its last eight digits (RecordHeadCache).
  // A forked child draws a start of its own.
  uint64_t next_nonce(pid_t self) noexcept;
  std::atomic<uint64_t> nonce_next_{0};
  std::atomic<pid_t> nonce_pid_{0};
  pid_t pid_ = 0;
  // append_record_tail of the cached record: of take()'s and of lend()'s, which are the same
  // make_record of this process (written only by take() and lend()).
  std::string tail_;
  std::optional<HolderRecord> spare_;
  std::string text_;  // the buffer records are formatted into; its capacity is kept
  RecordHeadCache head_;  // for store(), which the grant holding this cache's record calls
};

// Writes `record` at offset 0 of `fd`, padded with spaces to at least `file_size` so the file
// never needs truncating (a shorter rewrite would otherwise leave a tail of the old record).
// Only for files holdfast created itself. Updates `file_size`. Returns 0 or -errno.
int write_record(int fd, const HolderRecord& record, off_t& file_size);

// Sleeps for the next poll interval (1 ms doubling to 25 ms, with jitter), never past `wait`'s
// deadline. Returns false if the deadline has passed.
bool poll_sleep(const WaitSpec& wait, int& attempt);
// The next poll interval poll_sleep would sleep; nullopt if the deadline has passed.
std::optional<std::chrono::microseconds> poll_delay(const WaitSpec& wait, int& attempt);

// A dotlock waiter's sleep between two judgments, ended early by the events that can free the
// lock: a local holder's exit (a pidfd per live holder process) and the lock's name leaving its
// directory (inotify: renamed aside by release, or deleted). The poll interval stays the upper
// bound, for what no event reports (a holder on another host, a lease expiring, a change made
// by another NFS client). Events only end the sleep early: every wake-up is followed by a new
// judgment, so they never decide anything.
class HolderWatch {
 public:
  // `dir_fd`: the lock's directory (O_PATH is enough); `name`: the lock's name in it.
  HolderWatch(int dir_fd, std::string name) : dir_fd_(dir_fd), name_(std::move(name)) {}
  ~HolderWatch();
  HolderWatch(const HolderWatch&) = delete;
  HolderWatch& operator=(const HolderWatch&) = delete;
  // Sleeps until an event, or poll_delay's interval. Returns false if the deadline has passed.
  // The first call only sets up the directory watch and returns at once (a change between the
  // caller's judgment and the watch would otherwise go unseen).
  bool sleep(const WaitSpec& wait, int& attempt, const std::vector<pid_t>& live_holders);

 private:
  bool relevant_events() noexcept;  // drains the queue; true if one concerns name_
  int dir_fd_;
  std::string name_;
  int inotify_fd_ = -1;  // this thread's instance (never closed here)
  int watch_ = -1;
  bool armed_ = false;
};

// ---- side state of kernel locks (state_dir.cpp) ----
//
// A kernel lock's holder record and fencing state never live in or beside the user's lock file:
// they live in the state directory, named after the lock file's identity (device, inode and
// birth time, so a recycled inode number does not inherit another file's state).

// $HOLDFAST_STATE_DIR, else /var/tmp/holdfast.
std::string state_directory();

struct SideStatePaths {
  std::string fence;   // fencing-token state (fence.hpp layout)
  std::string record;  // the current exclusive holder's record
  uid_t lock_owner = 0;
  mode_t mode = 0644;  // for new state files: the lock file's permission bits, at most 0666
  bool may_create = false;  // root, the lock file's owner, or anyone if it is world-writable
};

// The state paths for the lock file open at `lock_fd` (whose fstat is `st`). nullopt, with a
// one-line reason in `why`, if the state directory cannot be used safely (not creatable, not a
// directory, a symlink, owned by someone else, world-writable without the sticky bit).
std::optional<SideStatePaths> side_state_for(int lock_fd, const struct stat& st, std::string* why);

// Opens (creating if absent, when allowed) a state file for writing: O_NOFOLLOW, a regular file
// owned by root, us or the lock file's owner. Returns the fd or -errno (-EPERM: untrusted);
// sets *created when this call created it.
// `st`, when given, receives the file's fstat (taken for the ownership check anyway).
int open_state_file(const SideStatePaths& paths, const std::string& file, bool* created = nullptr,
                    struct stat* st = nullptr);

}  // namespace holdfast::lock_internal

namespace holdfast {

namespace lock_internal {
struct OpenFiles;
struct ShmMapping;
}

// A grant: what one acquisition took. Each backend's grant releases exactly what it took, on
// every path — its destructor releases whatever is still held — so no caller cleans up by hand.
// Only the process that took a grant releases it: a forked child's copy (fork() duplicates the
// Lock) only closes its descriptors, and never unlocks the parent's lock or removes its files.
struct Lock::State {
  // A grant through `open_files` (whose target it names, without a copy).
  State(std::shared_ptr<lock_internal::OpenFiles> open_files, Backend kind, LockMode how, HolderRecord initial);
  // A grant through `open_files` whose record is `lent` (RecordCache::lend: the grant ends the
  // loan when it is destroyed), or its own, empty, when `lent` is null.
  State(std::shared_ptr<lock_internal::OpenFiles> open_files, Backend kind, LockMode how, HolderRecord* lent);
  // A grant naming its own copy of `where` (callers set `files` themselves).
  State(lock_internal::Target where, Backend kind, LockMode how, HolderRecord initial);
  virtual ~State();
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // One grant object's memory per thread is kept for the next grant instead of going back to
  // malloc (a thread that takes a lock in a loop reuses it; a thread holds few grants at once):
  // a repeated grant allocates nothing. Freed when the thread exits.
  static void* operator new(size_t bytes);
  static void operator delete(void* p, size_t bytes) noexcept;

  // Releases the lock; throws holdfast::Error if it turned out to be lost (dotlock reclaimed).
  // After it returns or throws, held() is false.
  virtual void release() = 0;
  // Forgets the lock without releasing it (see Lock::detach).
  virtual void detach() noexcept = 0;
  // Adds `process` to the record and rewrites it.
  virtual void add_holder_process(const ProcessIdentity& process) = 0;
  // The locked descriptor (kernel) or the lock file (dotlock); -1 once released.
  virtual int fd() const noexcept = 0;

  bool held() const noexcept { return held_; }

  // What the grant was taken through: a LockFile's open files (shared with it), or files opened
  // for this grant alone. While a grant holds the lock, files->busy is set so that the LockFile
  // does not grant again (a second lock on the same open file description would be a silent
  // no-op).
  std::shared_ptr<lock_internal::OpenFiles> files;

  // Sets files->busy for this grant (its constructor calls it once it holds the lock).
  void claim_files() noexcept;
  // Clears files->busy if this grant set it and has not cleared it yet (release, detach, or
  // destruction, whichever comes first). A grant released and destroyed later must not clear
  // the claim of a grant taken through the same files in between.
  void end_claim() noexcept;

 private:
  std::optional<lock_internal::Target> own_target_;  // only for the constructor naming `where`
  HolderRecord own_record_;  // the record, unless it is lent (record_lent_)

 public:
  const lock_internal::Target& target;  // files->target, or own_target_
  const Backend backend;
  const LockMode mode;
  // own_record_, or the LockFile's record lent for this grant (valid until the grant is
  // destroyed: a Lock's record() stays its own after release()).
  HolderRecord& record;

 protected:
  bool in_owner_process() const noexcept;
  bool held_ = true;
  // `record` came from files->records (take() or lend()) and still has its invariant part: it
  // is written by formatting only its head, and a taken one is handed back when the grant ends
  // (see ~State).
  bool record_cached_ = false;
  // `record` is files->records' lent one: the loan ends when the grant is destroyed.
  const bool record_lent_ = false;

 private:
  bool claims_files_ = false;  // this grant set files->busy (claim_files) and has not cleared it
  const pid_t owner_pid_;
};

namespace lock_internal {
// What a LockFile keeps open between acquisitions, so a repeated lock costs only the lock itself.
// Kept by a LockFile between acquisitions (so a repeated lock costs only the lock itself), or
// made for one acquisition by Lock's static functions (`per_grant`: closed when the grant ends).
struct OpenFiles {
  Target target;  // the lock path, checked once
  bool per_grant = true;
  bool busy = false;      // a grant taken through these files holds the lock (Lock::State::claim_files)
  sys::UniqueFd lock_fd;  // kernel backends: the lock file
  struct stat st {};      // its inode
  int access = -1;        // O_RDONLY / O_WRONLY / O_RDWR it was opened with
  bool side_state_checked = false;
  std::optional<SideStatePaths> side_state;  // kernel backends; nullopt: unavailable
  std::string side_state_why;
  sys::UniqueFd record_fd;  // kernel backends: the record file in the state directory
  off_t record_size = 0;
  // Its first page mapped shared (local state directories): a record no longer than the file
  // is stored with a memcpy instead of a pwrite.
  sys::SharedMapping record_map;
  std::optional<fence::FenceFile> fence;
  std::shared_ptr<ShmMapping> shm;  // shm backend: the validated mapping
  RecordCache records;  // this process's record, kept between grants
  pid_t guard_owner = 0;  // the process whose LockFile::Guard holds the kernel lock (kernel_guard_acquire)
};

// Return null if the wait ended without the lock. Throw holdfast::Error.
std::unique_ptr<Lock::State> kernel_acquire(const Target& target, Backend backend, const LockOptions& options,
                                            const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files);
std::unique_ptr<Lock::State> dotlock_acquire(const Target& target, Backend backend, const LockOptions& options,
                                             const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files);

// LockFile::Guard on a kernel lock, without a grant object: the same lock, token and record as
// kernel_acquire's exclusive grant. Applies to ofd and flock in exclusive mode with the record
// written at the grant (LockOptions::record_write's default).
bool kernel_guard_applies(Backend backend, const LockOptions& options) noexcept;
// Waits for the lock of `files` (a LockFile's, not busy), issues its token into `token` and
// writes the record; the grant is `files`' until kernel_guard_release. False, holding nothing,
// when the LockFile's record is lent to a grant that has not ended (the caller takes a Lock).
// Throws holdfast::Error as kernel_acquire does, holding nothing.
bool kernel_guard_acquire(const Target& target, Backend backend, const LockOptions& options, OpenFiles& files,
                          uint64_t& token);
// Ends kernel_guard_acquire's grant: unlocks (only in the process that locked) and ends the
// record's loan.
void kernel_guard_release(Backend backend, OpenFiles& files) noexcept;
}  // namespace lock_internal

}  // namespace holdfast

namespace holdfast::lock_internal {
// Judges the dotlock file at `path` the way a waiter would (held / stale), for inspection.
// Returns free if the file vanished meanwhile.
std::pair<HolderState, std::string> judge_dotlock(const std::string& path);

// The record of the kernel lock on the file open at `fd` (from the state directory); nullopt if
// there is none.
std::optional<HolderRecord> read_side_record(int fd, const struct stat& st);
}  // namespace holdfast::lock_internal

namespace holdfast {
// A LockFile's state: here (not in lock.cpp) so that LockFile::Guard's fast path in
// shm_backend.cpp reads it directly.
struct LockFile::Impl {
  LockOptions options;
  Backend backend;
  // Shared with the grants taken through it, so a grant that outlives the LockFile still owns
  // its descriptor.
  std::shared_ptr<lock_internal::OpenFiles> files;
  // LockFile::Guard takes the shm fast path: the shm backend in exclusive mode (decided at open).
  bool guard_fast = false;
  // LockFile::Guard takes the kernel one (kernel_guard_applies, decided at open).
  bool guard_kernel = false;
  // Its inline path: files->shm once open, when neither fair mode nor a test hook needs the
  // out-of-line one (set by the first guard grant).
  lock_internal::ShmMapping* guard_mapping = nullptr;

  // A grant as `wait` allows; null if the wait ended first. One at a time (files->busy).
  std::unique_ptr<Lock::State> acquire(const lock_internal::WaitSpec& wait);
};
}  // namespace holdfast
