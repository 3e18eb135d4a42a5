// select_backend: what Backend::automatic resolves to for a directory.
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "holdfast/lock.hpp"
#include "holdfast/probe.hpp"
#include "sys/file.hpp"

namespace holdfast {
namespace {

// Can this directory's filesystem make hard links? (link dotlocks need them.)
bool hard_links_work(const std::string& directory) {
  const std::string file = directory + "/.holdfast-linkcheck." + std::to_string(sys::random_u64());
  sys::UniqueFd fd(sys::open_nothrow(AT_FDCWD, file, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
  if (!fd) return true;  // cannot test here; link will report its own error if it fails
  const std::string other = file + ".2";
  bool ok = ::link(file.c_str(), other.c_str()) == 0;
  ::unlink(other.c_str());
  ::unlink(file.c_str());
  return ok;
}

}  // namespace

BackendChoice select_backend(const std::string& directory) {
  // kernel_lock_verdict caches per filesystem and forgets on any mount or unmount (device
  // numbers of FUSE and network mounts are reused).
  KernelLockVerdict v = kernel_lock_verdict(directory);
  if (!v.tested) return {Backend::ofd, v.reason + "; assuming OFD locks work"};
  if (v.ofd_excludes) return {Backend::ofd, "OFD locks are enforced on this " + v.filesystem + " filesystem"};
  const std::string why = "OFD locks are accepted but NOT enforced on this " + v.filesystem + " filesystem";
  if (v.flock_excludes) return {Backend::flock, why + "; flock(2) is enforced: using flock"};
  if (hard_links_work(directory)) return {Backend::link, why + ", nor flock(2): falling back to link dotlocks"};
  return {Backend::excl, why + ", nor flock(2), and it has no hard links: falling back to excl dotlocks"};
}

}  // namespace holdfast
