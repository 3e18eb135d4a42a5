// holdfast::Lock: chooses the backend, dispatches, and owns the grant's lifetime.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>

#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast {
namespace {

using lock_internal::WaitSpec;

bool is_kernel(Backend b) { return b == Backend::ofd || b == Backend::flock; }

// Does a kernel lock of `kind` exclude a second open file description of the same file? Two
// descriptions in one process conflict for OFD and flock locks exactly as they would across
// processes, so this detects filesystems that accept locks without enforcing them.
// Returns 1 enforced, 0 accepted but not enforced, -errno if unsupported.
int kernel_lock_enforced(const std::string& file, sys::KernelLockKind kind) {
  sys::UniqueFd a(sys::open_nothrow(AT_FDCWD, file, O_RDWR | O_NOFOLLOW));
  sys::UniqueFd b(sys::open_nothrow(AT_FDCWD, file, O_RDWR | O_NOFOLLOW));
  if (!a || !b) return -EIO;
  if (int rc = sys::kernel_lock(a.get(), kind, true, false); rc < 0) return rc;
  int rc = sys::kernel_lock(b.get(), kind, true, false);
  if (rc == 0) return 0;
  return rc == -EWOULDBLOCK ? 1 : rc;
}

BackendChoice examine_directory(const std::string& directory) {
  const std::string file = directory + "/.holdfast-select." + std::to_string(::getpid()) + "." +
                           std::to_string(sys::random_u64() & 0xffffff);
  sys::UniqueFd fd(sys::open_nothrow(AT_FDCWD, file, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
  if (!fd) return {Backend::ofd, "could not test " + directory + " (not writable?); assuming OFD locks work"};
  fd.reset();
  BackendChoice choice{Backend::ofd, "OFD locks are enforced on this filesystem"};
  int ofd = kernel_lock_enforced(file, sys::KernelLockKind::ofd);
  if (ofd != 1) {
    std::string why = ofd == 0 ? "OFD locks are accepted but NOT enforced on this filesystem"
                               : "OFD locks are not supported on this filesystem";
    int fl = kernel_lock_enforced(file, sys::KernelLockKind::flock);
    if (fl == 1) {
      choice = {Backend::flock, why + "; flock(2) is enforced, using flock"};
    } else {
      const std::string other = file + ".link";
      bool can_link = ::link(file.c_str(), other.c_str()) == 0;
      ::unlink(other.c_str());
      choice = can_link ? BackendChoice{Backend::link, why + ", and flock(2) too; falling back to link dotlocks"}
                        : BackendChoice{Backend::excl, why + ", and flock(2) too; no hard links: falling back to excl dotlocks"};
    }
  }
  ::unlink(file.c_str());
  return choice;
}

Backend resolve_backend(const lock_internal::Target& target, Backend requested) {
  return requested == Backend::automatic ? select_backend(target.dir).backend : requested;
}

// Returns the held state, or null if the wait ended first.
std::unique_ptr<Lock::State> acquire_with(const lock_internal::Target& target, Backend backend,
                                          const LockOptions& options, const WaitSpec& wait,
                                          lock_internal::OpenFiles* files) {
  return is_kernel(backend) ? lock_internal::kernel_acquire(target, backend, options, wait, files)
                            : lock_internal::dotlock_acquire(target, backend, options, wait, files);
}

std::unique_ptr<Lock::State> acquire_with(const std::string& path, const LockOptions& options, const WaitSpec& wait) {
  auto target = lock_internal::resolve_target(path);
  return acquire_with(target, resolve_backend(target, options.backend), options, wait, nullptr);
}

}  // namespace

BackendChoice select_backend(const std::string& directory) {
  // One examination per filesystem per process: the answer depends on the filesystem, not the
  // directory, and costs a few syscalls plus a temp file.
  static std::mutex mu;
  static std::map<dev_t, BackendChoice> cache;
  struct stat st {};
  if (sys::stat_nothrow(directory, st) != 0) return {Backend::ofd, "cannot stat " + directory};
  {
    std::lock_guard lk(mu);
    if (auto it = cache.find(st.st_dev); it != cache.end()) return it->second;
  }
  BackendChoice choice = examine_directory(directory);
  std::lock_guard lk(mu);
  cache.emplace(st.st_dev, choice);
  return choice;
}

Lock::Lock(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Lock::Lock(Lock&&) noexcept = default;
Lock& Lock::operator=(Lock&& other) noexcept {
  if (this != &other) {
    try {
      release();
    } catch (...) {
    }
    state_ = std::move(other.state_);
  }
  return *this;
}
Lock::~Lock() {
  try {
    release();
  } catch (...) {
    // Destructors cannot report; callers who care call release() themselves.
  }
}

Lock Lock::acquire(const std::string& path, const LockOptions& options) {
  auto state = acquire_with(path, options, WaitSpec{WaitSpec::forever, {}});
  if (!state) throw Error(path, "lock", "wait ended without the lock", exit_code::software);
  return Lock(std::move(state));
}

std::optional<Lock> Lock::try_acquire(const std::string& path, const LockOptions& options) {
  auto state = acquire_with(path, options, WaitSpec{WaitSpec::none, {}});
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

std::optional<Lock> Lock::acquire_until(const std::string& path, const LockOptions& options,
                                        std::chrono::steady_clock::time_point deadline) {
  auto state = acquire_with(path, options, WaitSpec{WaitSpec::until, deadline});
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

void Lock::release() {
  if (!state_ || !state_->held) return;
  if (is_kernel(state_->backend)) {
    lock_internal::kernel_release(*state_);
  } else {
    lock_internal::dotlock_release(*state_);
  }
}

void Lock::detach() noexcept {
  if (!state_) return;
  state_->heartbeat.reset();
  state_->fd.reset();  // close without unlocking: inheritors keep the kernel lock
  state_->borrowed_fd = -1;
  state_->held = false;
}

void Lock::add_holder_process(const ProcessIdentity& process) {
  if (!state_ || !state_->held) throw Error("", "add holder process", "lock is not held", exit_code::software);
  if (state_->mode != LockMode::exclusive) return;
  state_->record.processes.push_back(process);
  if (int rc = lock_internal::write_record(state_->descriptor(), state_->record, state_->file_size); rc < 0) {
    throw Error(-rc, state_->target.path, "cannot rewrite holder record");
  }
}

const std::string& Lock::path() const noexcept { return state_->target.path; }
Backend Lock::backend() const noexcept { return state_->backend; }
LockMode Lock::mode() const noexcept { return state_->mode; }
uint64_t Lock::token() const noexcept { return state_->record.token; }
const HolderRecord& Lock::record() const noexcept { return state_->record; }
int Lock::fd() const noexcept { return state_ && state_->held ? state_->descriptor() : -1; }
bool Lock::held() const noexcept { return state_ && state_->held; }

}  // namespace holdfast

namespace holdfast {

struct LockFile::Impl {
  lock_internal::Target target;
  LockOptions options;
  Backend backend;
  lock_internal::OpenFiles files;
};

LockFile LockFile::open(const std::string& path, const LockOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->target = lock_internal::resolve_target(path);
  impl->options = options;
  impl->backend = resolve_backend(impl->target, options.backend);
  impl->options.backend = impl->backend;
  return LockFile(std::move(impl));
}

LockFile::LockFile(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
LockFile::LockFile(LockFile&&) noexcept = default;
LockFile& LockFile::operator=(LockFile&&) noexcept = default;
LockFile::~LockFile() = default;

Lock LockFile::acquire() {
  auto state = acquire_with(impl_->target, impl_->backend, impl_->options, WaitSpec{WaitSpec::forever, {}}, &impl_->files);
  if (!state) throw Error(impl_->target.path, "lock", "wait ended without the lock", exit_code::software);
  return Lock(std::move(state));
}

std::optional<Lock> LockFile::try_acquire() {
  auto state = acquire_with(impl_->target, impl_->backend, impl_->options, WaitSpec{WaitSpec::none, {}}, &impl_->files);
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

std::optional<Lock> LockFile::acquire_until(std::chrono::steady_clock::time_point deadline) {
  auto state = acquire_with(impl_->target, impl_->backend, impl_->options, WaitSpec{WaitSpec::until, deadline}, &impl_->files);
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

Backend LockFile::backend() const noexcept { return impl_->backend; }
const std::string& LockFile::path() const noexcept { return impl_->target.path; }

}  // namespace holdfast
