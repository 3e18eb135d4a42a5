// ofd and flock backends: the kernel holds the lock; the file is only where it hangs. holdfast
// never writes into, truncates, chmods or touches the lock file (it may be a user's script or
// data, as in flock(1)'s `flock -n "$0"` idiom), and never creates anything beside it: the
// holder record and the fencing state live in the state directory (state_dir.cpp). The file is
// created when missing, as flock(1) does, and never unlinked (waiters would split across two
// inodes).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "holdfast/error.hpp"
#include "lock/fence.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"
#include "sys/process.hpp"

namespace holdfast::lock_internal {
namespace {

constexpr size_t kRecordMapBytes = 4096;
static_assert(kRecordMapBytes <= 4096, "learn_record_size peeks inside the page a file ends in: one page at most");

sys::KernelLockKind kind_of(Backend backend) {
  return backend == Backend::flock ? sys::KernelLockKind::flock : sys::KernelLockKind::ofd;
}

bool lockable_type(mode_t mode) { return S_ISREG(mode) || S_ISDIR(mode); }

[[noreturn]] void throw_not_lockable(const Target& target) {
  throw Error(target.path, "cannot use as lock file", "not a regular file or directory", exit_code::cant_create);
}

// Opens the lock file like flock(1): without needing write permission (a read-only file or a
// directory is lockable), creating it (mode 0666 minus umask) only when it does not exist, and
// never through a dangling symlink. O_NONBLOCK so that a FIFO planted at the path cannot block
// the open; anything but a regular file or a directory is refused (opening a device can have
// side effects, so it is checked before opening too).
void open_lock_file(const Target& target, int access, OpenFiles& files) {
  struct stat pre {};
  if (sys::stat_nothrow(target.path, pre) == 0 && !lockable_type(pre.st_mode)) throw_not_lockable(target);
  const int flags = access | O_NOCTTY | O_NONBLOCK | target.extra_open_flags;
  int fd = -ENOENT;
  for (int round = 0; round < 4; ++round) {
    fd = sys::open_nothrow(AT_FDCWD, target.path, flags);
    if (fd != -ENOENT) break;
    // O_EXCL: create only a name that does not exist, never the target of a dangling symlink.
    fd = sys::open_nothrow(AT_FDCWD, target.path, flags | O_CREAT | O_EXCL, 0666);
    if (fd != -EEXIST) break;
  }
  if (fd == -EEXIST) {
    throw Error(target.path, "cannot create lock file", "it is a dangling symbolic link", exit_code::no_input);
  }
  if (fd < 0) {
    if (access != O_RDONLY && (fd == -EISDIR || fd == -EACCES || fd == -EROFS || fd == -ETXTBSY)) {
      // Only OFD exclusive locks ask for write access (F_WRLCK needs a descriptor open for
      // writing); flock(2) does not.
      throw Error(target.path, "cannot take an exclusive ofd lock",
                  std::string(std::strerror(-fd)) + " opening it for writing, which OFD write locks need; "
                  "the flock backend locks read-only files and directories",
                  fd == -EACCES ? exit_code::no_perm : exit_code::cant_create);
    }
    throw_open_error(-fd, target, target.path);
  }
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) < 0) throw Error(errno, target.path, "cannot stat lock file");
  if (!lockable_type(st.st_mode)) throw_not_lockable(target);
  // O_NONBLOCK was only for the open; the command may inherit this descriptor.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  files.lock_fd = std::move(owned);
  files.st = st;
  files.access = access;
  files.side_state_checked = false;
  files.side_state.reset();
  files.record_fd.reset();
  files.record_map.reset();  // it maps the previous file's record
  files.record_size = 0;
  files.fence.reset();
}

enum class Locked { yes, wait_ended, needs_write_access };

// Locks `fd`, waiting as `wait` allows.
Locked lock_fd(int fd, const Target& target, Backend backend, bool exclusive, const WaitSpec& wait) {
  // The alarm lives only while we wait: a timer signal after the grant could interrupt the
  // fence's fdatasync or the caller's own system calls.
  std::optional<sys::DeadlineAlarm> alarm;
  if (wait.kind == WaitSpec::until) alarm.emplace(wait.deadline);
  int attempt = 0;
  for (;;) {
    // Block in the kernel when we can be woken at the deadline; otherwise poll.
    bool block = wait.kind == WaitSpec::forever || (wait.kind == WaitSpec::until && alarm && alarm->armed());
    int rc = sys::kernel_lock(fd, kind_of(backend), exclusive, block);
    if (rc == 0) return Locked::yes;
    if (rc == -EINTR) {
      if (wait.expired()) return Locked::wait_ended;
      continue;  // another signal: keep waiting until the deadline
    }
    if (rc == -EWOULDBLOCK) {
      if (!poll_sleep(wait, attempt)) return Locked::wait_ended;
      continue;
    }
    // NFS emulates flock(2) with POSIX locks, which want a writable descriptor for LOCK_EX
    // (EBADF since Linux 3.4, EIO before): flock(1) reopens read-write, and so do we.
    if ((rc == -EBADF || rc == -EIO) && backend == Backend::flock && exclusive) return Locked::needs_write_access;
    if (rc == -EINVAL || rc == -ENOLCK || rc == -EOPNOTSUPP || rc == -ENOSYS) {
      throw Error(target.path, std::string("cannot take ") + std::string(to_string(backend)) + " lock",
                  std::string(std::strerror(-rc)) + " (this filesystem may not support it; try --backend link)",
                  exit_code::unavailable);
    }
    throw Error(-rc, target.path, "cannot take lock");
  }
}

// Opens what a grant uses in the state directory, once per lock file: the fence, and for
// exclusive grants the record file (mapped where the fence is local). Called before the wait, so
// that a waiter handed the lock (its holder released it, or died) issues its token and writes
// its record at once instead of opening files first: recovery is then the kernel's alone.
// Opening takes nothing and writes no content (only an empty file may be created); the fence is
// read and written, and the record written, only under the lock. A file that cannot be opened
// costs the token or the record, never the lock (the kernel is the truth). `record`: false when
// the grant writes its record later (RecordWrite::at_first_added_holder), which opens it then.
void open_missing_state_files(OpenFiles& files, LockMode mode, bool record);
inline void open_state_files(OpenFiles& files, LockMode mode, bool record) {
  // Everything is open already (a repeated grant): no call.
  if (files.side_state_checked &&
      (!files.side_state || (files.fence && (!record || mode != LockMode::exclusive || files.record_fd)))) {
    return;
  }
  open_missing_state_files(files, mode, record);
}

void open_missing_state_files(OpenFiles& files, LockMode mode, bool record) {
  if (!files.side_state_checked) {
    files.side_state = side_state_for(files.lock_fd.get(), files.st, &files.side_state_why);
    files.side_state_checked = true;
  }
  if (!files.side_state) return;  // no state directory: grants without token or record
  if (!files.fence) {
    const SideStatePaths paths = *files.side_state;
    auto opener = [paths](bool& created) { return open_state_file(paths, paths.fence, &created); };
    bool created = false;
    struct stat st {};
    // Unwritable or not ours to trust (see open_state_file): no token; the record may still be.
    if (int fd = open_state_file(paths, paths.fence, &created, &st); fd >= 0) {
      files.fence.emplace(fence::FenceFile::adopt(paths.fence, opener, sys::UniqueFd(fd), created, &st));
      if (!files.per_grant) files.fence->keep_mapped();
    }
  }
  if (record && mode == LockMode::exclusive && !files.record_fd) {
    struct stat st {};
    int fd = open_state_file(*files.side_state, files.side_state->record, nullptr, &st);
    if (fd < 0) return;
    files.record_fd.reset(fd);
    files.record_size = st.st_size;
    if (!files.per_grant && files.fence && files.fence->local()) {
      files.record_map = sys::SharedMapping(fd, kRecordMapBytes);
    }
  }
}

// Whether the grant's record waits for its first added holder (LockOptions::record_write).
bool writes_record_later(const LockOptions& options) noexcept {
  return options.mode == LockMode::exclusive && options.record_write == RecordWrite::at_first_added_holder;
}

// Another handle (in this process or another) may have written a longer record since this one
// learnt the file's size: padding only to the size known here would leave the end of that
// record behind our newline, and the file would no longer parse. A grown file has its data at
// the old end, where an ungrown one reads zero (the rest of the page the file ends in; the
// mapping is at most one page of 4096 bytes, so any non-zero size below it ends in that page):
// one load answers. Otherwise (no mapping, an empty file, a size beyond the mapping) the file
// is asked.
void learn_record_size(OpenFiles& files) noexcept {
  const auto known = static_cast<size_t>(files.record_size);
  if (!files.record_map.empty() && known != 0 && known < files.record_map.size() &&
      files.record_map.data()[known] == '\0') {
    return;
  }
  struct stat st {};
  if (sys::fstat_nothrow(files.record_fd.get(), st) == 0) files.record_size = std::max(files.record_size, st.st_size);
}

// Writes `record`, an exclusive grant's, into the state directory's record file. `cached`: the
// record still has files.records' invariant part, so only its head is formatted. The record is
// informational for kernel locks (the kernel is the truth): a state directory that cannot take
// it costs the record, never the lock.
void write_side_record(OpenFiles& files, const HolderRecord& record, bool cached) {
  // Opened by the caller (open_state_files); a file that could not be opened costs the record.
  if (!files.record_fd) return;
  learn_record_size(files);
  if (cached) {
    // Within the file's size (holdfast never truncates a state file): a store, no syscall.
    if (!files.record_map.empty() && files.record_size <= static_cast<off_t>(files.record_map.size()) &&
        files.records.store(record, files.record_map.data(), static_cast<size_t>(files.record_size))) {
      return;
    }
    const std::string& text = files.records.format(record, files.record_size);
    if (sys::pwrite_all(files.record_fd.get(), text, 0) < 0) {
      files.record_fd.reset();
      files.record_map.reset();
      return;
    }
    files.record_size = std::max(files.record_size, static_cast<off_t>(text.size()));
    return;
  }
  if (write_record(files.record_fd.get(), record, files.record_size) < 0) {
    files.record_fd.reset();
    files.record_map.reset();
  }
}

// Under the lock: issues `record`'s token (exclusive grants; shared ones take the last one
// issued) and, for exclusive grants, writes the record. Without a state directory or a fence
// the token stays 0. Throws (the caller's grant, destroyed, unlocks).
void issue_token_and_write_record(OpenFiles& files, HolderRecord& record, LockMode mode, bool cached) {
  open_state_files(files, mode, true);  // opened before the wait; again only if that failed
  if (!files.side_state || !files.fence) return;  // no state directory, or no fence: no token
  record.token = mode == LockMode::exclusive ? files.fence->next() : files.fence->current();
  // Shared holders leave the record alone: several of them would overwrite each other.
  if (mode == LockMode::exclusive) write_side_record(files, record, cached);
}

// A kernel lock held through files.lock_fd. Destroying it releases what it took: unlock (only in
// the process that locked) and, for per-grant files, close.
class KernelGrant final : public Lock::State {
 public:
  // `lent`: files->records' record (RecordCache::lend), or null (the grant then takes one).
  KernelGrant(const std::shared_ptr<OpenFiles>& open_files, Backend kind, LockMode how, HolderRecord* lent)
      : State(open_files, kind, how, lent) {
    claim_files();
  }
  ~KernelGrant() override { end(); }
  KernelGrant(const KernelGrant&) = delete;
  KernelGrant& operator=(const KernelGrant&) = delete;

  void release() override { end(); }

  void detach() noexcept override {
    if (!held_) return;
    held_ = false;
    // Close without unlocking: processes that inherited the descriptor keep the lock. A
    // LockFile reopens the path on its next acquisition.
    files->lock_fd.reset();
    files->fence.reset();
  }

  void add_holder_process(const ProcessIdentity& process) override {
    if (record_options_) {
      // The record finish() left out: this process first, then the one added, with the token
      // and the time of the grant.
      HolderRecord full = files->records.take(backend, mode, *record_options_);
      full.token = record.token;
      full.acquired_unix_ns = record.acquired_unix_ns;
      record = std::move(full);
      record_options_.reset();
    }
    record.processes.push_back(process);
    record_cached_ = false;  // no longer the cached shape: written in full from now on
    open_state_files(*files, mode, true);  // again if a failed write closed the record file
    if (mode == LockMode::exclusive) write_side_record(*files, record, false);
  }

  int fd() const noexcept override { return held_ ? files->lock_fd.get() : -1; }

  // Issues the token and writes the record, or only issues the token when the record is written
  // at the first added holder (`options.record_write`; the record then has no process yet).
  // Throws (and the grant, destroyed, unlocks).
  void finish(const LockOptions& options) {
    if (writes_record_later(options)) {
      record_options_ = options;
      record.backend = backend;
      record.mode = mode;
      record.acquired_unix_ns = unix_ns_now();
      open_state_files(*files, mode, false);
      if (files->side_state && files->fence) record.token = files->fence->next();
      return;
    }
    if (record_lent_) {
      record.acquired_unix_ns = unix_ns_now();  // token 0 and a fresh nonce: lend() set them
    } else {
      record = files->records.take(backend, mode, options);
    }
    record_cached_ = true;
    issue_token_and_write_record(*files, record, mode, true);
  }

 private:
  // Set while the record waits for its first added holder: what it is then made with
  // (make_record's command and lease).
  std::optional<LockOptions> record_options_;

  void end() noexcept {
    if (!held_) return;
    held_ = false;
    if (in_owner_process()) {
      // Unlock explicitly before any close: the open file description may be shared with
      // children that inherited it, and release() promises the lock is free when it returns.
      sys::kernel_unlock(files->lock_fd.get(), kind_of(backend));
    }
    // A forked child only drops its own copy of the descriptor; the parent's lock stays.
    if (files->per_grant) {
      files->lock_fd.reset();
      files->record_fd.reset();
      files->record_map.reset();
    }
  }
};

// A record lent by a RecordCache until a grant takes the loan over (its destruction ends it):
// ended here if no grant is made (the wait ended, or an error).
class Loan {
 public:
  Loan(RecordCache& cache, HolderRecord* lent) noexcept : records(cache), record(lent) {}
  Loan(const Loan&) = delete;
  Loan& operator=(const Loan&) = delete;
  ~Loan() {
    if (record != nullptr) records.end_loan();
  }
  HolderRecord* get() const noexcept { return record; }
  HolderRecord* hand_over() noexcept { return std::exchange(record, nullptr); }

 private:
  RecordCache& records;
  HolderRecord* record;
};

// A kernel lock just taken, unlocked when this goes out of scope unless dismissed: between the
// lock and the object that releases it (a KernelGrant, or a guard), nothing may leak it.
class KernelUnlock {
 public:
  KernelUnlock(int fd, Backend backend) noexcept : fd_(fd), kind_(kind_of(backend)) {}
  KernelUnlock(const KernelUnlock&) = delete;
  KernelUnlock& operator=(const KernelUnlock&) = delete;
  ~KernelUnlock() {
    if (fd_ >= 0) sys::kernel_unlock(fd_, kind_);
  }
  void dismiss() noexcept { fd_ = -1; }

 private:
  int fd_;
  const sys::KernelLockKind kind_;
};

// Takes the kernel lock on the inode `target` names now, as `wait` allows: opens the lock file
// when it is not open with the access needed, and opens the state files before the wait (see
// open_state_files; `record`: whether the grant writes its record now). The path may have been
// unlinked or replaced between our open and our lock; then we would hold a lock nobody else can
// see, so that one is dropped and the path opened again. Returns false if the wait ended first.
// On true the lock is held on files.lock_fd, and nothing that can throw has run since: the
// caller takes it over at once.
bool lock_current_inode(const Target& target, Backend backend, LockMode mode, bool record, const WaitSpec& wait,
                        OpenFiles& files) {
  const bool exclusive = mode == LockMode::exclusive;
  // OFD write locks need a descriptor open for writing; flock(2) needs none (like flock(1)).
  int access = backend == Backend::ofd && exclusive ? O_WRONLY : O_RDONLY;
  if (files.lock_fd && files.access == O_RDWR) access = O_RDWR;
  for (;;) {
    if (!files.lock_fd || files.access != access) open_lock_file(target, access, files);
    open_state_files(files, mode, record);
    const Locked locked = lock_fd(files.lock_fd.get(), target, backend, exclusive, wait);
    if (locked == Locked::wait_ended) return false;
    if (locked == Locked::needs_write_access) {
      if (access == O_RDWR) throw Error(EBADF, target.path, "cannot take lock");
      access = O_RDWR;
      continue;
    }
    struct stat now;  // filled by a successful stat, read only then
    if (sys::stat_nothrow(target.path, now) == 0 && sys::same_inode(files.st, now)) return true;
    sys::kernel_unlock(files.lock_fd.get(), kind_of(backend));
    files.lock_fd.reset();  // reopen the path on the next round
  }
}

}  // namespace

std::unique_ptr<Lock::State> kernel_acquire(const Target& target, Backend backend, const LockOptions& options,
                                            const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files) {
  // The record is borrowed and the state files opened before locking: making them may throw,
  // and nothing is held yet. A record written later is neither borrowed nor opened now.
  const bool later = writes_record_later(options);
  Loan loan(files->records, later ? nullptr : files->records.lend(backend, options.mode, options));
  if (!lock_current_inode(target, backend, options.mode, !later, wait, *files)) return nullptr;
  // Held from here: the grant owns the lock (and the loan) before anything else can throw.
  KernelUnlock unlock_if_no_grant(files->lock_fd.get(), backend);
  auto grant = std::make_unique<KernelGrant>(files, backend, options.mode, loan.get());
  loan.hand_over();  // the grant ends the loan now
  unlock_if_no_grant.dismiss();
  grant->finish(options);
  return grant;
}

bool kernel_guard_applies(Backend backend, const LockOptions& options) noexcept {
  return (backend == Backend::ofd || backend == Backend::flock) && options.mode == LockMode::exclusive &&
         !writes_record_later(options);
}

bool kernel_guard_acquire(const Target& target, Backend backend, const LockOptions& options, OpenFiles& files,
                          uint64_t& token) {
  Loan loan(files.records, files.records.lend(backend, options.mode, options));
  HolderRecord* record = loan.get();
  // Still lent to a Lock of this LockFile (released, but not yet destroyed): the caller takes a
  // Lock, which takes a record of its own.
  if (record == nullptr) return false;
  lock_current_inode(target, backend, options.mode, true, WaitSpec{WaitSpec::forever, {}}, files);
  KernelUnlock unlock_on_error(files.lock_fd.get(), backend);
  record->acquired_unix_ns = unix_ns_now();  // token 0 and a fresh nonce: lend() set them
  issue_token_and_write_record(files, *record, options.mode, true);
  unlock_on_error.dismiss();
  loan.hand_over();  // kept until kernel_guard_release ends it
  files.busy = true;
  files.guard_owner = sys::current_pid();
  token = record->token;
  return true;
}

void kernel_guard_release(Backend backend, OpenFiles& files) noexcept {
  // A forked child's copy of the guard only drops its own view: the parent's lock stays (as
  // KernelGrant::end).
  if (files.guard_owner == sys::current_pid()) sys::kernel_unlock(files.lock_fd.get(), kind_of(backend));
  files.records.end_loan();
  files.busy = false;
}

}  // namespace holdfast::lock_internal
