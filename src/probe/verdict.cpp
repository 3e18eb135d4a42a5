// kernel_lock_verdict: the cheap check Backend::automatic consults. Two open file descriptions
// of one scratch file; lock through the first; the second must be refused. No fork needed: OFD
// and flock locks belong to the open file description, so this is the same test another process
// would make, and a filesystem that grants everything (nolock NFS, 9p, faultfs nolocks) fails it.
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

#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"

namespace holdfast {

namespace {

std::mutex g_mutex;
std::map<dev_t, KernelLockVerdict> g_cache;
sys::UniqueFd g_mountinfo;  // poll()ed for POLLPRI: the mount table changed

// Drops the cache if any mount or unmount happened since the last call. Caller holds g_mutex.
void invalidate_on_mount_change() {
  if (!g_mountinfo) {
    // Opening resets the event baseline, so anything cached before now is suspect.
    g_mountinfo.reset(sys::open_nothrow(AT_FDCWD, "/proc/self/mountinfo", O_RDONLY));
    g_cache.clear();
    return;
  }
  pollfd p{g_mountinfo.get(), POLLPRI, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLPRI | POLLERR)) != 0) g_cache.clear();
}

bool refused(int err) { return err == EWOULDBLOCK || err == EAGAIN || err == EACCES; }

KernelLockVerdict test_directory(const std::string& directory) {
  KernelLockVerdict v;
  struct statfs sfs{};
  if (::statfs(directory.c_str(), &sfs) == 0) {
    v.filesystem = probe_internal::fs_type_name(static_cast<uint64_t>(sfs.f_type));
  }
  char name[64];
  std::snprintf(name, sizeof name, "/.holdfast-lockcheck.%016" PRIx64, sys::random_u64());
  const std::string path = directory + name;
  sys::UniqueFd a(sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT | O_EXCL, 0600));
  if (!a) {
    v.reason = path + ": cannot create a scratch file to test locks: " + std::strerror(-a.get());
    return v;
  }
  sys::UniqueFd b(sys::open_nothrow(AT_FDCWD, path, O_RDWR));
  ::unlink(path.c_str());  // both descriptors keep the inode; nothing left behind
  if (!b) {
    v.reason = path + ": cannot reopen the scratch file: " + std::strerror(-b.get());
    return v;
  }
  v.tested = true;
  std::string why;

  struct flock fl{};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(a.get(), F_OFD_SETLK, &fl) != 0) {
    why += std::string("OFD locks refused (") + std::strerror(errno) + "); ";
  } else {
    struct flock fl2 = fl;
    int rc = ::fcntl(b.get(), F_OFD_SETLK, &fl2);
    v.ofd_excludes = rc != 0 && refused(errno);
    if (!v.ofd_excludes) why += "OFD write lock granted twice; ";
    fl.l_type = F_UNLCK;
    ::fcntl(a.get(), F_OFD_SETLK, &fl);
    ::fcntl(b.get(), F_OFD_SETLK, &fl);
  }

  if (::flock(a.get(), LOCK_EX | LOCK_NB) != 0) {
    why += std::string("flock refused (") + std::strerror(errno) + "); ";
  } else {
    int rc = ::flock(b.get(), LOCK_EX | LOCK_NB);
    v.flock_excludes = rc != 0 && refused(errno);
    if (!v.flock_excludes) why += "flock granted twice; ";
  }
  if (why.empty()) {
    v.reason = v.filesystem + ": OFD and flock locks are enforced";
  } else {
    why.resize(why.size() - 2);
    v.reason = v.filesystem + ": " + why;
  }
  return v;
}

}  // namespace

KernelLockVerdict kernel_lock_verdict(const std::string& directory) {
  struct stat st{};
  if (int rc = sys::stat_nothrow(directory, st); rc != 0) {
    KernelLockVerdict v;
    v.reason = directory + ": " + std::strerror(-rc);
    return v;
  }
  {
    std::lock_guard lock(g_mutex);
    invalidate_on_mount_change();
    if (auto it = g_cache.find(st.st_dev); it != g_cache.end()) {
      KernelLockVerdict v = it->second;
      v.from_cache = true;
      return v;
    }
  }
  KernelLockVerdict v = test_directory(directory);
  if (v.tested) {
    std::lock_guard lock(g_mutex);
    // A mount change while testing may mean we tested a different filesystem than we key by.
    invalidate_on_mount_change();
    struct stat now{};
    if (sys::stat_nothrow(directory, now) == 0 && now.st_dev == st.st_dev) g_cache[st.st_dev] = v;
  }
  return v;
}

}  // namespace holdfast
