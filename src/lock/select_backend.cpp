// select_backend: what Backend::automatic resolves to for a directory, and the refusal of an
// explicitly chosen backend this filesystem is known to break. docs/LOCKS.md "Choosing a backend".
//
// Decided from measurements only: the quick kernel-lock check (kernel_lock_verdict, remembered
// per mount across processes) and whatever `holdfast probe` measured on the same mount. Where
// nothing can be measured, the answer is an error, never a guess (review item C19).
#include "lock/select_backend.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <string>

#include "holdfast/error.hpp"
#include "holdfast/lock.hpp"
#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
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

bool probed_unsafe(const std::string& directory, Primitive p) {
  return stored_probe_verdict(directory, p) == Verdict::unsafe;
}

std::string probe_says(Primitive p) {
  return "holdfast probe measured " + std::string(to_string(p)) + " UNSAFE on this mount";
}

}  // namespace

BackendChoice select_backend(const std::string& directory) { return select_backend(directory, ""); }

BackendChoice select_backend(const std::string& directory, const std::string& lock_file) {
  // The kernel-lock check and holdfast probe's verdicts for this mount, from one lookup.
  const auto verdicts = probe_internal::mount_verdicts(directory, lock_file);
  const KernelLockVerdict& v = verdicts.lock;
  auto unsafe = [&](Primitive p) { return probe_internal::measured_unsafe(verdicts.probe, p); };
  if (!v.tested) {
    // No lock file, and no file can be created here: the lock cannot be taken with any backend,
    // so say what the open would have said (EROFS, EACCES, ENOSPC) rather than "cannot verify".
    struct stat st{};
    if (!lock_file.empty() && v.error_number != 0 && sys::lstat_nothrow(lock_file, st) == -ENOENT) {
      throw Error(v.error_number, lock_file, "cannot open lock file");
    }
    throw Error(directory, "cannot choose a lock backend",
                "cannot verify that kernel locks are enforced here (" + v.reason +
                    "); choose a backend explicitly",
                exit_code::unavailable);
  }
  const std::string fs = v.filesystem.empty() ? std::string("this") : "this " + v.filesystem;
  // flock first: it is what flock(1), python filelock and Go's lockedfile take, so all of them
  // exclude each other on the same file.
  if (v.flock_excludes && !unsafe(Primitive::flock)) {
    return {Backend::flock, "flock(2) locks are enforced on " + fs + " filesystem"};
  }
  std::string why = v.flock_excludes ? probe_says(Primitive::flock)
                                     : "flock(2) locks are accepted but NOT enforced on " + fs + " filesystem";
  if (v.ofd_excludes && !unsafe(Primitive::ofd)) {
    return {Backend::ofd, why + "; OFD locks are: using ofd"};
  }
  why += v.ofd_excludes ? ", " + probe_says(Primitive::ofd) : ", nor OFD locks";
  if (::faccessat(AT_FDCWD, directory.c_str(), W_OK, AT_EACCESS) != 0) {
    throw Error(directory, "cannot choose a lock backend",
                why + ", and a dotlock needs a directory this process can write: no safe lock here",
                exit_code::unavailable);
  }
  if (hard_links_work(directory)) {
    if (!unsafe(Primitive::link)) return {Backend::link, why + ": falling back to link dotlocks"};
    why += ", " + probe_says(Primitive::link);
  } else {
    why += ", and it has no hard links";
  }
  if (unsafe(Primitive::excl) || unsafe(Primitive::rename)) {
    throw Error(directory, "cannot choose a lock backend",
                why + ", and creates are not atomic (holdfast probe): no safe lock here", exit_code::unavailable);
  }
  return {Backend::excl, why + ": falling back to excl dotlocks"};
}

std::optional<Backend> recommended_backend(const ProbeReport& report) {
  auto safe = [&](Primitive p) {
    const auto* r = report.find(p);
    return r != nullptr && r->verdict == Verdict::safe;
  };
  if (safe(Primitive::flock)) return Backend::flock;
  if (safe(Primitive::ofd)) return Backend::ofd;
  if (safe(Primitive::link)) return Backend::link;
  if (safe(Primitive::excl) && safe(Primitive::rename)) return Backend::excl;
  return std::nullopt;
}

namespace lock_internal {

void refuse_known_unsafe(const Target& target, Backend backend) {
  auto refuse = [&](const std::string& why) {
    throw Error(target.path, std::string("refusing --backend ") + std::string(to_string(backend)),
                why + " (override: allow_unsafe_backend / --allow-unsafe)", exit_code::unavailable);
  };
  switch (backend) {
    case Backend::automatic:
      return;
    case Backend::ofd:
    case Backend::flock: {
      const Primitive p = backend == Backend::ofd ? Primitive::ofd : Primitive::flock;
      const auto verdicts = probe_internal::mount_verdicts(target.dir, target.path);
      const KernelLockVerdict& v = verdicts.lock;
      const bool enforced = backend == Backend::ofd ? v.ofd_excludes : v.flock_excludes;
      if (v.tested && !enforced) refuse(std::string(to_string(backend)) + " locks are not enforced here: " + v.reason);
      if (probe_internal::measured_unsafe(verdicts.probe, p)) refuse(probe_says(p));
      return;
    }
    case Backend::shm:
      return;  // a mapping in the state directory: nothing about the lock file's filesystem matters
    case Backend::link:
      if (probed_unsafe(target.dir, Primitive::link)) refuse(probe_says(Primitive::link));
      return;
    case Backend::excl:
      // excl relies on RENAME_NOREPLACE, and on O_CREAT|O_EXCL where renameat2 is refused.
      for (Primitive p : {Primitive::rename, Primitive::excl}) {
        if (probed_unsafe(target.dir, p)) refuse(probe_says(p) + ": creates are not atomic");
      }
      return;
  }
}

Backend choose_backend(const Target& target, const LockOptions& options) {
  if (options.backend == Backend::automatic) return select_backend(target.dir, target.path).backend;
  if (!options.allow_unsafe_backend) refuse_known_unsafe(target, options.backend);
  return options.backend;
}

}  // namespace lock_internal
}  // namespace holdfast
