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
//   5. remove the marker (moved aside by rename and unlinked only if it is still ours).
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "holdfast/error.hpp"
#include "lock/fence.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"

namespace holdfast::lock_internal {
namespace {

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A sibling name for a temp or marker file: ".BASE.KIND.SUFFIX" in the lock's directory. The
// leading dot keeps them out of casual listings; the base ties them to their lock.
std::string sibling(const Target& t, const std::string& of_name, const std::string& kind, const std::string& suffix) {
  return t.dir + "/." + sys::basename_of(of_name) + "." + kind + "." + suffix;
}

struct Owned {
  sys::UniqueFd fd;
  struct stat st {};
  off_t size = 0;
};

// Writes `record` to a fresh unique temp file beside the lock. Throws on failure.
Owned write_temp(const Target& t, const std::string& tmp, const HolderRecord& record) {
  Owned o;
  int fd = sys::open_nothrow(AT_FDCWD, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, 0644);
  if (fd < 0) throw_open_error(-fd, t, tmp);
  o.fd.reset(fd);
  if (int rc = write_record(fd, record, o.size); rc < 0) {
    ::unlink(tmp.c_str());
    throw Error(-rc, tmp, "cannot write holder record");
  }
  if (sys::fstat_nothrow(fd, o.st) < 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(err, tmp, "cannot stat lock file");
  }
  return o;
}

enum class Create { created, exists };

// Makes `name` appear, exclusively, already holding `record`.
Create create_exclusive(const Target& t, Backend backend, const std::string& name, const HolderRecord& record,
                        Owned& out) {
  const std::string tmp = sibling(t, name, "new", hex(sys::random_u64()));
  Owned o = write_temp(t, tmp, record);
  if (backend == Backend::link) {
    int rc = ::link(tmp.c_str(), name.c_str());
    int err = rc == 0 ? 0 : errno;
    struct stat st {};
    // NFS may report failure for a link that was made (lost reply); the link count tells.
    bool linked = sys::fstat_nothrow(o.fd.get(), st) == 0 && st.st_nlink >= 2;
    ::unlink(tmp.c_str());
    if (!linked) {
      if (err == EEXIST) return Create::exists;
      if (err == EPERM || err == EOPNOTSUPP || err == ENOSYS) {
        throw Error(name, "cannot create link dotlock", std::string(std::strerror(err)) +
                    " (this filesystem has no hard links; try --backend excl)", exit_code::unavailable);
      }
      throw Error(err == 0 ? EIO : err, name, "cannot create dotlock");
    }
  } else {
    int rc = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, name.c_str(), RENAME_NOREPLACE);
    if (rc != 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      if (err == EEXIST) return Create::exists;
      if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP) throw Error(err, name, "cannot create dotlock");
      // No RENAME_NOREPLACE here: plain O_CREAT|O_EXCL. The record follows the create, so a
      // reader may briefly see an empty file; it treats that as held (fail closed).
      int fd = sys::open_nothrow(AT_FDCWD, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY, 0644);
      if (fd == -EEXIST) return Create::exists;
      if (fd < 0) throw_open_error(-fd, t, name);
      o = Owned{};
      o.fd.reset(fd);
      if (int wrc = write_record(fd, record, o.size); wrc < 0) {
        ::unlink(name.c_str());  // ours: created exclusively a moment ago and never shared
        throw Error(-wrc, name, "cannot write holder record");
      }
      sys::fstat_nothrow(fd, o.st);
    }
  }
  // Post-create check: on a filesystem whose exclusive create is not atomic, a racer may have
  // replaced our file already. Only the inode the name points at now is the lock.
  struct stat now {};
  if (sys::stat_nothrow(name, now) != 0 || !sys::same_inode(now, o.st)) return Create::exists;
  out = std::move(o);
  return Create::created;
}

struct Judgment {
  enum Kind { held, stale, vanished } kind = held;
  sys::UniqueFd fd;
  struct stat st {};
  std::string reason;
};

// Decides whether the dotlock at `name` is held or proven stale.
Judgment judge(const Target& t, const std::string& name, const LockOptions& options) {
  Judgment j;
  int fd = sys::open_nothrow(AT_FDCWD, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY);
  if (fd == -ENOENT) {
    j.kind = Judgment::vanished;
    return j;
  }
  if (fd < 0) throw_open_error(-fd, t, name);
  j.fd.reset(fd);
  if (sys::fstat_nothrow(fd, j.st) < 0) throw Error(errno, name, "cannot stat lock file");
  auto text = sys::pread_all(fd, size_t{256} * 1024);
  auto record = text ? HolderRecord::parse(*text) : std::nullopt;

  int64_t lease_ms = options.stale_after.count();
  if (record) lease_ms = std::max(lease_ms, record->lease_ms);
  auto mtime = std::chrono::system_clock::time_point(std::chrono::seconds(j.st.st_mtim.tv_sec) +
                                                     std::chrono::nanoseconds(j.st.st_mtim.tv_nsec));
  auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now() - mtime);
  const bool lease_expired = lease_ms > 0 && idle.count() > lease_ms;

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

// Moves `name` aside and unlinks it only if it is the inode `ours`. If it is not (our file was
// taken over, e.g. after a lease expired), puts it back without overwriting. True if removed.
bool remove_if_ours(const Target& t, const std::string& name, const struct stat& ours) {
  const std::string aside = sibling(t, name, "gone", hex(sys::random_u64()));
  if (::rename(name.c_str(), aside.c_str()) != 0) return false;
  struct stat st {};
  if (sys::stat_nothrow(aside, st) == 0 && sys::same_inode(st, ours)) {
    ::unlink(aside.c_str());
    return true;
  }
  ::renameat2(AT_FDCWD, aside.c_str(), AT_FDCWD, name.c_str(), RENAME_NOREPLACE);
  return false;
}

constexpr int kMaxReclaimDepth = 2;

// Replaces the stale file `victim` at `name` by a file holding `record`. True if we did; `out`
// then owns the new file.
bool reclaim(const Target& t, Backend backend, const std::string& name, const Judgment& victim,
             const HolderRecord& record, const LockOptions& options, int depth, Owned& out) {
  const std::string marker = sibling(t, name, "reclaim", hex(victim.st.st_dev) + "-" + hex(victim.st.st_ino));
  Owned mark;
  if (create_exclusive(t, backend, marker, record, mark) == Create::exists) {
    if (depth >= kMaxReclaimDepth) return false;
    Judgment m = judge(t, marker, options);
    if (m.kind != Judgment::stale) return false;  // a live reclaimer is at work, or it just finished
    if (!reclaim(t, backend, marker, m, record, options, depth + 1, mark)) return false;
  }
  bool replaced = false;
  struct stat now {};
  if (sys::stat_nothrow(name, now) == 0 && sys::same_inode(now, victim.st)) {
    const std::string tmp = sibling(t, name, "new", hex(sys::random_u64()));
    Owned fresh = write_temp(t, tmp, record);
    if (::rename(tmp.c_str(), name.c_str()) == 0) {
      replaced = sys::stat_nothrow(name, now) == 0 && sys::same_inode(now, fresh.st);
      if (replaced) out = std::move(fresh);
    } else {
      int err = errno;
      ::unlink(tmp.c_str());
      remove_if_ours(t, marker, mark.st);
      throw Error(err, name, "cannot replace stale dotlock");
    }
  }
  remove_if_ours(t, marker, mark.st);
  return replaced;
}

}  // namespace

std::unique_ptr<Lock::State> dotlock_acquire(const Target& target, Backend backend, const LockOptions& options,
                                             const WaitSpec& wait, OpenFiles* files) {
  if (options.mode == LockMode::shared) {
    throw Error(target.path, std::string(to_string(backend)) + " dotlock", "shared mode is not supported by dotlocks",
                exit_code::usage);
  }
  // The token is assigned once we hold the lock; 0 in a record means "being finalised".
  HolderRecord record = make_record(backend, options.mode, options);
  Owned owned;
  int attempt = 0;
  int stale_handles = 0;
  for (;;) {
    try {
      if (create_exclusive(target, backend, target.path, record, owned) == Create::created) break;
      Judgment j = judge(target, target.path, options);
      if (j.kind == Judgment::vanished) continue;
      if (j.kind == Judgment::stale && reclaim(target, backend, target.path, j, record, options, 0, owned)) break;
    } catch (const Error& e) {
      // Network and FUSE filesystems answer ESTALE when a file we just looked up was replaced
      // under us: the race moved on, so look again (a few times, then report it).
      if (e.error_number() != ESTALE || ++stale_handles > 8) throw;
      continue;
    }
    if (!poll_sleep(wait, attempt)) return nullptr;
  }
  auto state = std::make_unique<Lock::State>();
  state->target = target;
  state->backend = backend;
  state->mode = options.mode;
  state->fd = std::move(owned.fd);
  state->st = owned.st;
  state->file_size = owned.size;
  state->record = std::move(record);
  state->held = true;
  try {
    std::optional<fence::FenceFile> local_fence;
    auto& fence = files != nullptr ? files->fence : local_fence;
    if (!fence) fence.emplace(fence::FenceFile::open(target.path, target.extra_open_flags));
    state->record.token = fence->next();
    if (int rc = write_record(state->fd.get(), state->record, state->file_size); rc < 0) {
      throw Error(-rc, target.path, "cannot write holder record");
    }
  } catch (...) {
    dotlock_release(*state);
    throw;
  }
  if (options.stale_after.count() > 0) {
    state->heartbeat = std::make_unique<Heartbeat>(state->fd.get(), options.stale_after);
  }
  return state;
}

std::pair<HolderState, std::string> judge_dotlock(const std::string& path) {
  Target t = resolve_target(path);
  Judgment j = judge(t, path, LockOptions{});
  switch (j.kind) {
    case Judgment::held: return {HolderState::held, j.reason};
    case Judgment::stale: return {HolderState::stale, j.reason};
    case Judgment::vanished: break;
  }
  return {HolderState::free, "the lock file vanished while being read"};
}

void dotlock_release(Lock::State& state) {
  state.heartbeat.reset();
  bool removed = remove_if_ours(state.target, state.target.path, state.st);
  state.fd.reset();
  state.held = false;
  if (!removed) {
    throw Error(state.target.path, "releasing dotlock",
                "the lock file is no longer ours (it was reclaimed: lease expired or removed by hand)",
                exit_code::conflict);
  }
}

}  // namespace holdfast::lock_internal
