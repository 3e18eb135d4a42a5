// excl and link backends: the lock is the existence of a file holding a complete holder record.
//
// Creation makes the name appear with its record already written (a temp file linked or
// renamed into place), so no reader ever sees an empty lock. Staleness is decided by proof of
// death only (identity.hpp). Reclaim never deletes by path after a separate check:
//
//   1. open the victim and keep it open (its inode number cannot be reused while we do);
//   2. create the reclaim marker ".BASE.reclaim.DEV-INO" exclusively — one marker per victim
//      inode, so exactly one reclaimer proceeds; a marker whose creator is proven dead is
//      itself reclaimed the same way (depth-limited);
//   3. under the marker, check the name still points at the victim: nobody but the marker owner
//      may replace a dead holder's file, so it cannot change before step 4;
//   4. rename our complete record file over the name — an atomic replace, with no instant at
//      which the name is free for a third party to create;
//   5. remove the marker (moved aside by rename and unlinked only if it is still ours) — on
//      every path out of the reclaim, by a scope guard.
//
// "Still ours" is decided first without touching the name: if the name no longer points at our
// inode, someone replaced it, and the name now belongs to them.
//
// Every name is used relative to a descriptor of the lock's directory, opened once per acquire
// (O_PATH): a relative lock path followed by chdir() must not make release, or a reclaim, act on
// a file of the same name in another directory. Paths are kept only for messages.
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

#include "holdfast/error.hpp"
#include "lock/fence.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::lock_internal {
namespace {

std::string hex(uint64_t v) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i) {
    out[static_cast<size_t>(i)] = kHex[v & 0xf];
    v >>= 4;
  }
  return out;
}

// The record being written while acquiring, formatted through the LockFile's cache (only the
// per-grant head is formatted each time).
struct RecordOut {
  const HolderRecord& record;
  RecordCache& cache;
  int write(int fd, off_t& size) const { return cache.write(fd, record, size); }
};

// A sibling name for a temp or marker file: ".BASE.KIND.SUFFIX" in the lock's directory. The
// leading dot keeps them out of casual listings; the base ties them to their lock.
std::string sibling(const Target& t, const std::string& of_name, const std::string& kind, const std::string& suffix) {
  return t.dir + "/." + sys::basename_of(of_name) + "." + kind + "." + suffix;
}

// The name of a file of ours relative to the lock directory's descriptor.
std::string leaf(const std::string& name) { return sys::basename_of(name); }

int stat_at(int dir, const std::string& name, struct stat& st) {
  return ::fstatat(dir, leaf(name).c_str(), &st, 0) == 0 ? 0 : -errno;
}

struct Owned {
  sys::UniqueFd fd;
  struct stat st {};
  off_t size = 0;
};

// Unlinks a temp name on scope exit unless disarmed (it was linked or renamed into place).
class TempName {
 public:
  TempName(int dir, std::string path) : dir_(dir), path_(std::move(path)) {}
  ~TempName() {
    if (armed_) ::unlinkat(dir_, leaf(path_).c_str(), 0);
  }
  TempName(const TempName&) = delete;
  TempName& operator=(const TempName&) = delete;
  const std::string& path() const { return path_; }
  void disarm() { armed_ = false; }

 private:
  int dir_;
  std::string path_;
  bool armed_ = true;
};

// Writes `record` to the fresh temp file `tmp` (created exclusively). Throws on failure; the
// caller's TempName removes the name.
Owned write_temp(const Target& t, int dir, const std::string& tmp, const RecordOut& record) {
  Owned o;
  int fd = sys::open_nothrow(dir, leaf(tmp), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, 0644);
  if (fd < 0) throw_open_error(-fd, t, tmp);
  o.fd.reset(fd);
  if (int rc = record.write(fd, o.size); rc < 0) throw Error(-rc, tmp, "cannot write holder record");
  if (sys::fstat_nothrow(fd, o.st) < 0) throw Error(errno, tmp, "cannot stat lock file");
  return o;
}

// Moves `name` aside and unlinks it only if it is our inode `mine` (as the name showed it when we
// created it). Decides without touching the name first: if the name points at another inode, our
// file was replaced (our lease expired and someone reclaimed it, or it was removed by hand) and
// the name is not ours — moving it aside even for a moment would free the name for a third
// process. (Compared by stat of the name, not by fstat st_nlink: FUSE filesystems without
// use_ino give each hard link its own inode, whose link count drops to 0 with its temp name.)
bool remove_if_ours(const Target& t, int dir, const std::string& name, const struct stat& mine) {
  struct stat now {};
  if (stat_at(dir, name, now) != 0 || !sys::same_inode(now, mine)) return false;
  // Only a reclaim landing in the microseconds since the stat can still race us here, and only
  // for a holder whose lease had already expired; then the file is put back.
  const std::string aside = sibling(t, name, "gone", hex(sys::unique_u64()));
  if (::renameat(dir, leaf(name).c_str(), dir, leaf(aside).c_str()) != 0) return false;
  struct stat st {};
  if (stat_at(dir, aside, st) == 0 && sys::same_inode(st, mine)) {
    ::unlinkat(dir, leaf(aside).c_str(), 0);
    return true;
  }
  ::renameat2(dir, leaf(aside).c_str(), dir, leaf(name).c_str(), RENAME_NOREPLACE);
  return false;
}

enum class Create { created, exists };

// Makes `name` appear, exclusively, already holding `record`.
Create create_exclusive(const Target& t, int dir, Backend backend, const std::string& name, const RecordOut& record,
                        Owned& out) {
  TempName tmp(dir, sibling(t, name, "new", hex(sys::unique_u64())));
  Owned o = write_temp(t, dir, tmp.path(), record);
  if (backend == Backend::link) {
    int rc = ::linkat(dir, leaf(tmp.path()).c_str(), dir, leaf(name).c_str(), 0);
    int err = rc == 0 ? 0 : errno;
    struct stat st {};
    // NFS may report failure for a link that was made (lost reply); the link count tells.
    if (sys::fstat_nothrow(o.fd.get(), st) < 0) throw Error(errno, tmp.path(), "cannot stat lock file");
    const bool linked = st.st_nlink >= 2;
    if (!linked) {
      if (err == EEXIST) return Create::exists;
      if (err == EPERM || err == EOPNOTSUPP || err == ENOSYS) {
        throw Error(name, "cannot create link dotlock", std::string(std::strerror(err)) +
                    " (this filesystem has no hard links; try --backend excl)", exit_code::unavailable);
      }
      throw Error(err == 0 ? EIO : err, name, "cannot create dotlock");
    }
    // tmp's destructor unlinks the temp name; the lock name stays.
  } else {
    int rc = ::renameat2(dir, leaf(tmp.path()).c_str(), dir, leaf(name).c_str(), RENAME_NOREPLACE);
    if (rc == 0) {
      tmp.disarm();
    } else {
      int err = errno;
      if (err == EEXIST) return Create::exists;
      if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) throw Error(err, name, "cannot create dotlock");
      // No RENAME_NOREPLACE here: plain O_CREAT|O_EXCL. The record follows the create, so a
      // reader may briefly see an empty file; it treats that as held (fail closed).
      int fd = sys::open_nothrow(dir, leaf(name), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, 0644);
      if (fd == -EEXIST) return Create::exists;
      if (fd < 0) throw_open_error(-fd, t, name);
      o = Owned{};
      o.fd.reset(fd);
      TempName created(dir, name);  // ours: created exclusively a moment ago and never shared
      if (int wrc = record.write(fd, o.size); wrc < 0) throw Error(-wrc, name, "cannot write holder record");
      if (sys::fstat_nothrow(fd, o.st) < 0) throw Error(errno, name, "cannot stat lock file");
      created.disarm();
    }
  }
  // Post-create check: on a filesystem whose exclusive create is not atomic, a racer may have
  // replaced our file already. Only the inode the name points at now is the lock. A check that
  // cannot be made is an error, never "someone else has it" (we would wait on ourselves).
  struct stat now {};
  if (int rc = stat_at(dir, name, now); rc != 0) {
    if (rc == -ENOENT) return Create::exists;
    throw Error(-rc, name, "cannot check the dotlock just created");
  }
  if (!sys::same_inode(now, o.st)) return Create::exists;
  out = std::move(o);
  return Create::created;
}

struct Judgment {
  enum Kind { held, stale, vanished } kind = held;
  sys::UniqueFd fd;
  struct stat st {};
  std::string reason;
  std::vector<pid_t> live_holders;  // held: the local process verified alive (its exit wakes waiters)
};

std::chrono::system_clock::time_point time_point_of(const struct timespec& ts) {
  return std::chrono::system_clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

// The filesystem's own "now": the mtime of a file created (and removed at once) beside the lock,
// ".BASE.clock.RANDOM", holdfast's own. On NFS or SMB the server sets both that mtime and the
// holder's heartbeat mtime, so a lease is judged server time against server time, whatever the
// clocks of the holder and the waiter say. nullopt if it cannot be made (read-only directory).
std::optional<std::chrono::system_clock::time_point> filesystem_now(const Target& t, int dir, const std::string& name) {
  const std::string clock = sibling(t, name, "clock", hex(sys::unique_u64()));
  int fd = sys::open_nothrow(dir, leaf(clock), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, 0644);
  if (fd < 0) return std::nullopt;
  sys::UniqueFd file(fd);
  struct stat st {};
  const int rc = sys::fstat_nothrow(fd, st);
  ::unlinkat(dir, leaf(clock).c_str(), 0);
  if (rc < 0) return std::nullopt;
  return time_point_of(st.st_mtim);
}

// Decides whether the dotlock at `name` is held or proven stale.
Judgment judge(const Target& t, int dir, const std::string& name, const LockOptions& options) {
  Judgment j;
  // O_NONBLOCK: a FIFO planted at the name must not block -n or -w.
  int fd = sys::open_nothrow(dir, leaf(name), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
  if (fd == -ENOENT) {
    j.kind = Judgment::vanished;
    return j;
  }
  if (fd < 0) throw_open_error(-fd, t, name);
  j.fd.reset(fd);
  if (sys::fstat_nothrow(fd, j.st) < 0) throw Error(errno, name, "cannot stat lock file");
  if (!S_ISREG(j.st.st_mode)) {
    throw Error(name, "cannot use as dotlock", "not a regular file", exit_code::cant_create);
  }
  auto text = sys::pread_all(fd, kRecordReadLimit);
  auto record = text ? HolderRecord::parse(*text) : std::nullopt;

  int64_t lease_ms = options.stale_after.count();
  if (record) lease_ms = std::max(lease_ms, record->lease_ms);
  // The lease is measured on the filesystem's clock (S3: a waiter whose own clock runs ahead must
  // not steal a heartbeating holder); the local clock only where no clock file can be made.
  bool lease_expired = false;
  if (lease_ms > 0) {
    const auto now = filesystem_now(t, dir, name).value_or(std::chrono::system_clock::now());
    const auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(now - time_point_of(j.st.st_mtim));
    lease_expired = idle.count() > lease_ms;
  }

  if (!record) {
    j.kind = lease_expired ? Judgment::stale : Judgment::held;
    j.reason = lease_expired ? "record unreadable and lease expired" : "record unreadable or incomplete (held: fail closed)";
    return j;
  }
  bool any_unknown = false;
  std::string unknown_reason;
  std::string dead_reason;
  for (const auto& p : record->processes) {
    auto verdict = judge_liveness(p);
    if (verdict.liveness == Liveness::alive) {
      j.kind = Judgment::held;
      j.reason = verdict.reason;
      j.live_holders.push_back(p.pid);
      return j;
    }
    if (verdict.liveness == Liveness::unknown) {
      any_unknown = true;
      unknown_reason = verdict.reason;
    } else {
      dead_reason = verdict.reason;
    }
  }
  if (any_unknown && !lease_expired) {
    j.kind = Judgment::held;
    j.reason = unknown_reason + " (held: fail closed)";
    return j;
  }
  j.kind = Judgment::stale;
  j.reason = any_unknown ? unknown_reason + "; lease of " + std::to_string(lease_ms) + " ms expired" : dead_reason;
  return j;
}

// A reclaim marker we created: removed (if still ours) when the reclaim ends, however it ends.
class Marker {
 public:
  Marker(const Target& t, int dir, std::string name) : t_(t), dir_(dir), name_(std::move(name)) {}
  ~Marker() {
    if (file.fd) remove_if_ours(t_, dir_, name_, file.st);
  }
  Marker(const Marker&) = delete;
  Marker& operator=(const Marker&) = delete;
  const std::string& name() const { return name_; }
  Owned file;

 private:
  const Target& t_;
  int dir_;
  std::string name_;
};

constexpr int kMaxReclaimDepth = 2;

// Replaces the stale file `victim` at `name` by a file holding `record`. True if we did; `out`
// then owns the new file.
bool reclaim(const Target& t, int dir, Backend backend, const std::string& name, const Judgment& victim,
             const RecordOut& record, const LockOptions& options, int depth, Owned& out) {
  Marker marker(t, dir, sibling(t, name, "reclaim", hex(victim.st.st_dev) + "-" + hex(victim.st.st_ino)));
  if (create_exclusive(t, dir, backend, marker.name(), record, marker.file) == Create::exists) {
    if (depth >= kMaxReclaimDepth) return false;
    Judgment m = judge(t, dir, marker.name(), options);
    if (m.kind != Judgment::stale) return false;  // a live reclaimer is at work, or it just finished
    if (!reclaim(t, dir, backend, marker.name(), m, record, options, depth + 1, marker.file)) return false;
  }
  struct stat now {};
  if (stat_at(dir, name, now) != 0 || !sys::same_inode(now, victim.st)) return false;
  TempName tmp(dir, sibling(t, name, "new", hex(sys::unique_u64())));
  Owned fresh = write_temp(t, dir, tmp.path(), record);
  if (::renameat(dir, leaf(tmp.path()).c_str(), dir, leaf(name).c_str()) != 0) {
    throw Error(errno, name, "cannot replace stale dotlock");
  }
  tmp.disarm();
  if (stat_at(dir, name, now) != 0 || !sys::same_inode(now, fresh.st)) return false;
  out = std::move(fresh);
  return true;
}

// A held dotlock: our file at the name. Destroying it releases what it took (in the process
// that took it; a forked child only closes its descriptor).
class DotlockGrant final : public Lock::State {
 public:
  DotlockGrant(std::shared_ptr<OpenFiles> open_files, Backend kind, HolderRecord initial, sys::UniqueFd dir,
               Owned file)
      : State(std::move(open_files), kind, LockMode::exclusive, std::move(initial)),
        dir_(std::move(dir)),
        file_(std::move(file)) {
    claim_files();
    record_cached_ = true;  // taken from files->records by dotlock_acquire
  }
  ~DotlockGrant() override {
    try {
      end();
    } catch (...) {
      // Destructors cannot report; release() reports a lost lock.
    }
  }
  DotlockGrant(const DotlockGrant&) = delete;
  DotlockGrant& operator=(const DotlockGrant&) = delete;

  void release() override {
    if (!end()) {
      throw Error(target.path, "releasing dotlock",
                  "the lock file is no longer ours (it was reclaimed: lease expired or removed by hand)",
                  exit_code::conflict);
    }
  }

  void detach() noexcept override {
    if (!held_) return;
    held_ = false;
    stop_heartbeat();
    file_.fd.reset();
  }

  void add_holder_process(const ProcessIdentity& process) override {
    record.processes.push_back(process);
    record_cached_ = false;  // no longer the cached shape: written in full from now on
    rewrite();
  }

  int fd() const noexcept override { return held_ ? file_.fd.get() : -1; }

  // Issues the token into the record and starts the heartbeat. Throws (the grant, destroyed,
  // removes the file).
  void finish(const LockOptions& options) {
    if (!files->fence) {
      files->fence.emplace(fence::FenceFile::open(fence::sidecar_path(target.path), target.extra_open_flags));
      if (!files->per_grant) files->fence->keep_mapped();
    }
    record.token = files->fence->next();
    rewrite();
    if (options.stale_after.count() > 0) heartbeat_ = std::make_unique<Heartbeat>(file_.fd.get(), options.stale_after);
  }

 private:
  void rewrite() {
    const int rc = record_cached_ ? files->records.write(file_.fd.get(), record, file_.size)
                                  : write_record(file_.fd.get(), record, file_.size);
    if (rc < 0) {
      throw Error(-rc, target.path, "cannot write holder record");
    }
  }

  void stop_heartbeat() noexcept {
    // A forked child has the Heartbeat object but not its thread: joining it there would hang
    // or abort, so the child leaves it alone.
    if (in_owner_process()) {
      heartbeat_.reset();
    } else {
      (void)heartbeat_.release();  // NOLINT(bugprone-unused-return-value): intentionally leaked
    }
  }

  // Returns false if the file turned out not to be ours any more.
  bool end() {
    if (!held_) return true;
    held_ = false;
    stop_heartbeat();
    bool removed = true;
    if (in_owner_process()) removed = remove_if_ours(target, dir_.get(), target.path, file_.st);
    file_.fd.reset();
    return removed;
  }

  sys::UniqueFd dir_;  // the lock's directory, as resolved at acquire
  Owned file_;
  std::unique_ptr<Heartbeat> heartbeat_;
};

}  // namespace

std::unique_ptr<Lock::State> dotlock_acquire(const Target& target, Backend backend, const LockOptions& options,
                                             const WaitSpec& wait, const std::shared_ptr<OpenFiles>& files) {
  if (options.mode == LockMode::shared) {
    throw Error(target.path, std::string(to_string(backend)) + " dotlock", "shared mode is not supported by dotlocks",
                exit_code::usage);
  }
  // The token is assigned once we hold the lock; 0 in a record means "being finalised".
  HolderRecord taken = files->records.take(backend, options.mode, options);
  const RecordOut record{taken, files->records};
  // Resolved once: every later step (reclaim, release) acts in this directory, whatever the
  // process's working directory becomes.
  int dir_fd = sys::open_nothrow(AT_FDCWD, target.dir, O_PATH | O_DIRECTORY);
  if (dir_fd < 0) throw Error(-dir_fd, target.dir, "cannot use lock directory");
  sys::UniqueFd dir(dir_fd);
  Owned owned;
  int attempt = 0;
  int stale_handles = 0;
  HolderWatch watch(dir.get(), leaf(target.path));
  std::vector<pid_t> live_holders;
  for (;;) {
    live_holders.clear();
    try {
      if (create_exclusive(target, dir.get(), backend, target.path, record, owned) == Create::created) break;
      Judgment j = judge(target, dir.get(), target.path, options);
      if (j.kind == Judgment::vanished) continue;
      live_holders = std::move(j.live_holders);
      if (j.kind == Judgment::stale && reclaim(target, dir.get(), backend, target.path, j, record, options, 0, owned)) {
        break;
      }
      stale_handles = 0;  // the budget is for ESTALEs in a row, not over a long wait
    } catch (const Error& e) {
      // Network and FUSE filesystems answer ESTALE when a file we just looked up was replaced
      // under us: the race moved on, so look again (a few times in a row, then report it).
      if (e.error_number() != ESTALE || ++stale_handles > 8) throw;
      continue;
    }
    if (!watch.sleep(wait, attempt, live_holders)) {
      files->records.give_back(std::move(taken), true);
      return nullptr;
    }
  }
  auto grant = std::make_unique<DotlockGrant>(files, backend, std::move(taken), std::move(dir), std::move(owned));
  grant->finish(options);
  return grant;
}

std::pair<HolderState, std::string> judge_dotlock(const std::string& path) {
  Target t = resolve_target(path);
  int dir_fd = sys::open_nothrow(AT_FDCWD, t.dir, O_PATH | O_DIRECTORY);
  if (dir_fd < 0) throw Error(-dir_fd, t.dir, "cannot use lock directory");
  sys::UniqueFd dir(dir_fd);
  Judgment j = judge(t, dir.get(), path, LockOptions{});
  switch (j.kind) {
    case Judgment::held: return {HolderState::held, j.reason};
    case Judgment::stale: return {HolderState::stale, j.reason};
    case Judgment::vanished: break;
  }
  return {HolderState::free, "the lock file vanished while being read"};
}

}  // namespace holdfast::lock_internal
