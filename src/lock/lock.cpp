// holdfast::Lock: chooses the backend, dispatches, and owns the grant's lifetime.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "lock/internal.hpp"
#include "lock/select_backend.hpp"
#include "sys/file.hpp"

namespace holdfast {
namespace {

using lock_internal::WaitSpec;

bool is_kernel(Backend b) { return b == Backend::ofd || b == Backend::flock; }

Backend resolve_backend(const lock_internal::Target& target, const LockOptions& options) {
  return lock_internal::choose_backend(target, options);
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
  return acquire_with(target, resolve_backend(target, options), options, wait, nullptr);
}

}  // namespace

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
  impl->backend = resolve_backend(impl->target, options);
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
