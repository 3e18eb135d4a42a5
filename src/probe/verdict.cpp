// kernel_lock_verdict: the cheap check Backend::automatic consults. Two open file descriptions
// of one scratch file; lock through the first; the second must be refused. No fork needed: OFD
// and flock locks belong to the open file description, so this is the same test another process
// would make, and a filesystem that grants everything (nolock NFS, 9p, faultfs nolocks) fails it.
//
// Where the scratch file cannot be created (a root-owned 0755 directory with a pre-created 0666
// lock file), the same test runs on the lock file itself, taking only shared locks (C19: never
// guess). Verdicts are remembered per mount in this process and across processes
// (verdict_cache.cpp), keyed by probe_internal::mount_key.
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>

#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast {

namespace {

std::mutex g_mutex;
// This process's memory, by st_dev: cheap to look up on every Lock::acquire (a stat, a poll), and
// dropped whenever the mount table changes (a remount included), so a device number reused by a
// new mount is never answered from here. The mount key (which reads /proc/self/mountinfo) is
// only computed on a miss, for the cross-process store.
struct Entry {
  std::optional<KernelLockVerdict> lock;
  std::optional<std::map<std::string, std::string>> probe;  // holdfast probe's verdicts, by primitive
};
std::map<dev_t, Entry> g_cache;
sys::UniqueFd g_mountinfo;  // poll()ed for POLLPRI: the mount table changed

// Drops the cache if any mount or unmount happened since the last call. Caller holds g_mutex.
void invalidate_on_mount_change() {
  if (!g_mountinfo) {
    // No baseline yet. With nothing cached there is nothing to invalidate: a process that looks
    // up once (the holdfast command; its answer comes from the store or a test, never from here)
    // does not pay for opening the table (~30 µs). Otherwise open it now; opening resets the
    // event baseline, so anything cached before now is suspect and is dropped.
    if (g_cache.empty()) return;
    g_mountinfo.reset(sys::open_nothrow(AT_FDCWD, "/proc/self/mountinfo", O_RDONLY));
    g_cache.clear();
    return;
  }
  pollfd p{g_mountinfo.get(), POLLPRI, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLPRI | POLLERR)) != 0) g_cache.clear();
}

std::string filesystem_of(const std::string& path) {
  struct statfs sfs{};
  if (::statfs(path.c_str(), &sfs) != 0) return "unknown";
  return probe_internal::fs_type_name(static_cast<uint64_t>(sfs.f_type));
}

void explain(KernelLockVerdict& v, std::string why, const char* where) {
  if (why.empty()) {
    v.reason = v.filesystem + ": OFD and flock locks are enforced";
  } else {
    why.resize(why.size() - 2);
    v.reason = v.filesystem + ": " + why;
  }
  v.reason += where;
}

KernelLockVerdict test_directory(const std::string& directory) {
  KernelLockVerdict v;
  v.filesystem = filesystem_of(directory);
  char name[64];
  std::snprintf(name, sizeof name, "/.holdfast-lockcheck.%016" PRIx64, sys::random_u64());
  const std::string path = directory + name;
  sys::UniqueFd a(sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
  if (!a) {
    v.error_number = -a.get();
    v.reason = path + ": cannot create a scratch file to test locks: " + std::strerror(-a.get());
    return v;
  }
  sys::UniqueFd b(sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_NOFOLLOW));
  ::unlink(path.c_str());  // both descriptors keep the inode; nothing left behind
  if (!b) {
    v.error_number = -b.get();
    v.reason = path + ": cannot reopen the scratch file: " + std::strerror(-b.get());
    return v;
  }
  v.tested = true;
  std::string why;

  using sys::KernelLockKind;
  if (int rc = sys::kernel_lock(a.get(), KernelLockKind::ofd, true, false); rc != 0) {
    why += std::string("OFD locks refused (") + std::strerror(-rc) + "); ";
  } else {
    v.ofd_excludes = sys::kernel_lock(b.get(), KernelLockKind::ofd, true, false) == -EWOULDBLOCK;
    if (!v.ofd_excludes) why += "OFD write lock granted twice; ";
    sys::kernel_unlock(a.get(), KernelLockKind::ofd);
    sys::kernel_unlock(b.get(), KernelLockKind::ofd);
  }
  if (int rc = sys::kernel_lock(a.get(), KernelLockKind::flock, true, false); rc != 0) {
    why += std::string("flock refused (") + std::strerror(-rc) + "); ";
  } else {
    v.flock_excludes = sys::kernel_lock(b.get(), KernelLockKind::flock, true, false) == -EWOULDBLOCK;
    if (!v.flock_excludes) why += "flock granted twice; ";
  }
  explain(v, why, "");
  return v;
}

// The same question asked of the lock file itself, for a process that cannot create a scratch
// file. Only shared locks are taken through `a` (for microseconds); the second description then
// tries an exclusive lock without blocking. Where locks are enforced that attempt is always
// refused (our own shared lock conflicts), so a real holder is never disturbed; and a refusal of
// our own shared lock is itself proof that locks are enforced. Asking with F_OFD_GETLK instead is
// not evidence: libfuse's high-level API answers GETLK from its own table of granted locks even
// when the filesystem enforces nothing (faultfs nolocks shows it), so only real attempts count.
KernelLockVerdict test_lock_file(const std::string& lock_file, const std::string& why_not_directory) {
  KernelLockVerdict v;
  v.filesystem = filesystem_of(lock_file);
  auto fail = [&](const std::string& what, int err) {
    v.reason = why_not_directory + "; " + lock_file + ": " + what + ": " + std::strerror(err);
    return v;
  };
  const int flags = O_NONBLOCK | O_NOCTTY;
  sys::UniqueFd a(sys::open_nothrow(AT_FDCWD, lock_file, O_RDONLY | flags));
  if (!a) return fail("cannot open the lock file to test locks", -a.get());
  sys::UniqueFd b(sys::open_nothrow(AT_FDCWD, lock_file, O_RDONLY | flags));
  if (!b) return fail("cannot reopen the lock file", -b.get());
  // An OFD write lock needs a descriptor open for writing; without one, OFD stays untested.
  sys::UniqueFd bw(sys::open_nothrow(AT_FDCWD, lock_file, O_WRONLY | flags));
  struct stat sa{}, sb{}, sw{};
  if (sys::fstat_nothrow(a.get(), sa) != 0 || sys::fstat_nothrow(b.get(), sb) != 0 || !sys::same_inode(sa, sb) ||
      (bw && (sys::fstat_nothrow(bw.get(), sw) != 0 || !sys::same_inode(sa, sw)))) {
    return fail("replaced while testing", EAGAIN);
  }
  v.tested = true;
  v.on_lock_file = true;
  std::string why;
  using sys::KernelLockKind;
  if (!bw) {
    why += "OFD untested (no write access to the lock file); ";
  } else if (int rc = sys::kernel_lock(a.get(), KernelLockKind::ofd, false, false); rc == -EWOULDBLOCK) {
    v.ofd_excludes = true;  // a writer holds it, and we were refused: enforced
  } else if (rc != 0) {
    why += std::string("OFD locks refused (") + std::strerror(-rc) + "); ";
  } else {
    int rb = sys::kernel_lock(bw.get(), KernelLockKind::ofd, true, false);
    v.ofd_excludes = rb == -EWOULDBLOCK;
    if (rb == 0) sys::kernel_unlock(bw.get(), KernelLockKind::ofd);
    if (!v.ofd_excludes) why += "OFD write lock granted over a read lock; ";
    sys::kernel_unlock(a.get(), KernelLockKind::ofd);
  }
  if (int rc = sys::kernel_lock(a.get(), KernelLockKind::flock, false, false); rc == -EWOULDBLOCK) {
    v.flock_excludes = true;
  } else if (rc != 0) {
    why += std::string("flock refused (") + std::strerror(-rc) + "); ";
  } else {
    int rb = sys::kernel_lock(b.get(), KernelLockKind::flock, true, false);
    v.flock_excludes = rb == -EWOULDBLOCK;
    if (rb == 0) sys::kernel_unlock(b.get(), KernelLockKind::flock);
    if (!v.flock_excludes) why += "exclusive flock granted over a shared one; ";
    sys::kernel_unlock(a.get(), KernelLockKind::flock);
  }
  explain(v, why, " (tested on the lock file: the directory is not writable)");
  return v;
}

KernelLockVerdict from_store(const probe_internal::StoredVerdicts& s) {
  KernelLockVerdict v;
  v.tested = true;
  v.from_cache = true;
  v.from_persistent_cache = true;
  v.ofd_excludes = s.ofd_excludes.value_or(false);
  v.flock_excludes = s.flock_excludes.value_or(false);
  v.filesystem = s.filesystem;
  v.reason = s.reason;
  return v;
}

}  // namespace

namespace probe_internal {
void forget_process_verdicts() {
  std::lock_guard lock(g_mutex);
  g_cache.clear();
}
}  // namespace probe_internal

KernelLockVerdict kernel_lock_verdict(const std::string& directory) { return kernel_lock_verdict(directory, ""); }

KernelLockVerdict kernel_lock_verdict(const std::string& directory, const std::string& lock_file) {
  return probe_internal::mount_verdicts(directory, lock_file).lock;
}

namespace probe_internal {

MountVerdicts mount_verdicts(const std::string& directory, const std::string& lock_file) {
  MountVerdicts out;
  KernelLockVerdict& v = out.lock;
  struct stat st{};
  if (int rc = sys::stat_nothrow(directory, st); rc != 0) {
    v.error_number = -rc;
    v.reason = directory + ": " + std::strerror(-rc);
    return out;
  }
  {
    std::lock_guard lock(g_mutex);
    invalidate_on_mount_change();
    if (auto it = g_cache.find(st.st_dev); it != g_cache.end() && it->second.lock && it->second.probe) {
      v = *it->second.lock;
      v.from_cache = true;
      out.probe = *it->second.probe;
      return out;
    }
  }
  const auto key = mount_key(directory);
  std::optional<StoredVerdicts> stored;
  if (key) stored = load_verdicts(*key);
  // The same file holds holdfast probe's verdicts for this mount: one read answers both.
  if (stored) out.probe = stored->probe;
  if (stored && stored->ofd_excludes && stored->flock_excludes) {
    v = from_store(*stored);
    std::lock_guard lock(g_mutex);
    invalidate_on_mount_change();
    Entry& e = g_cache[st.st_dev];
    e.lock = v;
    e.probe = out.probe;
    return out;
  }
  v = test_directory(directory);
  if (!v.tested && !lock_file.empty()) {
    const int scratch_error = v.error_number;
    v = test_lock_file(lock_file, v.reason);
    if (!v.tested) v.error_number = scratch_error;
  }
  if (!v.tested) return out;
  // A mount change while testing may mean we tested a different filesystem than we key by.
  const auto key_now = mount_key(directory);
  struct stat now{};
  if (key_now != key || sys::stat_nothrow(directory, now) != 0 || now.st_dev != st.st_dev) return out;
  {
    std::lock_guard lock(g_mutex);
    invalidate_on_mount_change();
    Entry& e = g_cache[st.st_dev];
    e.lock = v;
    e.probe = out.probe;
  }
  if (key) {
    StoredVerdicts s;
    s.ofd_excludes = v.ofd_excludes;
    s.flock_excludes = v.flock_excludes;
    s.filesystem = v.filesystem;
    s.reason = v.reason;
    store_verdicts(*key, s);
  }
  return out;
}

bool measured_unsafe(const std::map<std::string, std::string>& probe, Primitive primitive) {
  auto it = probe.find(std::string(to_string(primitive)));
  return it != probe.end() && parse_verdict(it->second) == Verdict::unsafe;
}

}  // namespace probe_internal

std::optional<Verdict> stored_probe_verdict(const std::string& directory, Primitive primitive) {
  struct stat st{};
  if (sys::stat_nothrow(directory, st) != 0) return std::nullopt;
  std::map<std::string, std::string> probe;
  bool cached = false;
  {
    std::lock_guard lock(g_mutex);
    invalidate_on_mount_change();
    if (auto it = g_cache.find(st.st_dev); it != g_cache.end() && it->second.probe) {
      probe = *it->second.probe;
      cached = true;
    }
  }
  if (!cached) {
    if (auto key = probe_internal::mount_key(directory)) {
      if (auto stored = probe_internal::load_verdicts(*key)) probe = stored->probe;
    }
    std::lock_guard lock(g_mutex);
    g_cache[st.st_dev].probe = probe;
  }
  auto it = probe.find(std::string(to_string(primitive)));
  if (it == probe.end()) return std::nullopt;
  return parse_verdict(it->second);
}

}  // namespace holdfast
