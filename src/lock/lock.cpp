// holdfast::Lock: chooses the backend, dispatches, and owns the grant's lifetime.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <utility>

#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "lock/internal.hpp"
#include "lock/select_backend.hpp"
#include "lock/shm.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

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
                                          const std::shared_ptr<lock_internal::OpenFiles>& files) {
  if (backend == Backend::shm) return lock_internal::shm_acquire(target, options, wait, files);
  if (options.fair) {
    throw Error(target.path, "fair mode", "only the shm backend offers it (see docs/LOCKS.md)", exit_code::usage);
  }
  return is_kernel(backend) ? lock_internal::kernel_acquire(target, backend, options, wait, files)
                            : lock_internal::dotlock_acquire(target, backend, options, wait, files);
}

std::unique_ptr<Lock::State> acquire_with(const std::string& path, const LockOptions& options, const WaitSpec& wait) {
  auto files = std::make_shared<lock_internal::OpenFiles>();
  files->target = lock_internal::resolve_target(path);
  return acquire_with(files->target, resolve_backend(files->target, options), options, wait, files);
}

}  // namespace

Lock::State::State(std::shared_ptr<lock_internal::OpenFiles> open_files, Backend kind, LockMode how,
                   HolderRecord initial)
    : files(std::move(open_files)),
      own_record_(std::move(initial)),
      target(files->target),
      backend(kind),
      mode(how),
      record(own_record_),
      owner_pid_(sys::current_pid()) {}

Lock::State::State(std::shared_ptr<lock_internal::OpenFiles> open_files, Backend kind, LockMode how,
                   HolderRecord* lent)
    : files(std::move(open_files)),
      target(files->target),
      backend(kind),
      mode(how),
      record(lent != nullptr ? *lent : own_record_),
      record_lent_(lent != nullptr),
      owner_pid_(sys::current_pid()) {}

Lock::State::State(lock_internal::Target where, Backend kind, LockMode how, HolderRecord initial)
    : own_target_(std::move(where)),
      own_record_(std::move(initial)),
      target(*own_target_),
      backend(kind),
      mode(how),
      record(own_record_),
      owner_pid_(sys::current_pid()) {}

void Lock::State::claim_files() noexcept {
  files->busy = true;
  claims_files_ = true;
}

void Lock::State::end_claim() noexcept {
  if (!claims_files_) return;
  claims_files_ = false;
  if (files) files->busy = false;
}

Lock::State::~State() {
  end_claim();
  if (files) {
    if (record_lent_) {
      files->records.end_loan();
    } else if (record_cached_) {
      files->records.give_back(std::move(record), true);
    }
  }
}

namespace {

// The one grant object's memory a thread keeps (see Lock::State::operator new). Trivially
// destructible, so it stays usable until the thread ends, also by grants destroyed after the
// thread's other thread_local objects (a Lock in a static): the reaper frees the block at thread
// exit and closes the slot, after which blocks go straight back to malloc.
struct GrantSlot {
  void* block = nullptr;
  size_t bytes = 0;
  bool reaper_armed = false;
  bool closed = false;
};
thread_local GrantSlot t_grant_slot;

struct GrantSlotReaper {
  GrantSlotReaper() = default;
  GrantSlotReaper(const GrantSlotReaper&) = delete;
  GrantSlotReaper& operator=(const GrantSlotReaper&) = delete;
  ~GrantSlotReaper() {
    ::operator delete(t_grant_slot.block);
    t_grant_slot.block = nullptr;
    t_grant_slot.closed = true;
  }
};

}  // namespace

void* Lock::State::operator new(size_t bytes) {
  GrantSlot& slot = t_grant_slot;
  if (slot.block != nullptr && slot.bytes == bytes) return std::exchange(slot.block, nullptr);
  return ::operator new(bytes);
}

void Lock::State::operator delete(void* p, size_t bytes) noexcept {
  GrantSlot& slot = t_grant_slot;
  if (slot.block != nullptr || slot.closed) {
    ::operator delete(p);
    return;
  }
  if (!slot.reaper_armed) {
    thread_local GrantSlotReaper reaper;  // constructed once per thread, destroyed at its exit
    slot.reaper_armed = true;
  }
  slot.block = p;
  slot.bytes = bytes;
}

bool Lock::State::in_owner_process() const noexcept { return sys::current_pid() == owner_pid_; }

Lock::Lock(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
Lock::Lock(Lock&&) noexcept = default;
Lock& Lock::operator=(Lock&& other) noexcept {
  if (this != &other) state_ = std::move(other.state_);  // the old grant's destructor releases it
  return *this;
}
// The grant's destructor releases whatever it still holds (errors are ignored; callers who care
// call release() themselves).
Lock::~Lock() = default;

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
  if (!state_ || !state_->held()) return;
  struct EndClaim {
    State& s;
    ~EndClaim() { s.end_claim(); }
  } end_claim{*state_};
  state_->release();
}

void Lock::detach() noexcept {
  if (!state_) return;
  state_->detach();
  state_->end_claim();
}

void Lock::add_holder_process(const ProcessIdentity& process) {
  if (!state_ || !state_->held()) throw Error("", "add holder process", "lock is not held", exit_code::software);
  if (state_->mode != LockMode::exclusive) return;
  if (!process.verifiable()) {
    // A record naming a process by an unverifiable identity can never prove it dead or alive.
    throw Error(state_->target.path, "cannot name process " + std::to_string(process.pid) + " in the holder record",
                "its start time or this machine's boot id cannot be read", exit_code::os_error);
  }
  state_->add_holder_process(process);
}

const std::string& Lock::path() const noexcept { return state_->target.path; }
Backend Lock::backend() const noexcept { return state_->backend; }
LockMode Lock::mode() const noexcept { return state_->mode; }
uint64_t Lock::token() const noexcept { return state_->record.token; }
const HolderRecord& Lock::record() const noexcept { return state_->record; }
int Lock::fd() const noexcept { return state_ ? state_->fd() : -1; }
bool Lock::held() const noexcept { return state_ && state_->held(); }

}  // namespace holdfast

namespace holdfast {

std::unique_ptr<Lock::State> LockFile::Impl::acquire(const WaitSpec& wait) {
  // A second lock on the same open file description would be granted at once (a no-op
  // conversion), and releasing either would free both: refuse instead.
  if (files->busy) {
    if (wait.kind == WaitSpec::forever) {
      throw Error(files->target.path, "lock", "this LockFile already holds the lock (it would wait on itself forever)",
                  exit_code::software);
    }
    return nullptr;
  }
  return acquire_with(files->target, backend, options, wait, files);
}

LockFile LockFile::open(const std::string& path, const LockOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->files = std::make_shared<lock_internal::OpenFiles>();
  impl->files->per_grant = false;
  impl->files->target = lock_internal::resolve_target(path);
  impl->options = options;
  impl->backend = resolve_backend(impl->files->target, options);
  impl->options.backend = impl->backend;
  impl->guard_fast = impl->backend == Backend::shm && options.mode == LockMode::exclusive;
  impl->guard_kernel = lock_internal::kernel_guard_applies(impl->backend, impl->options);
  return LockFile(std::move(impl));
}

LockFile::LockFile(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
LockFile::LockFile(LockFile&&) noexcept = default;
LockFile& LockFile::operator=(LockFile&&) noexcept = default;
LockFile::~LockFile() = default;

Lock LockFile::acquire() {
  auto state = impl_->acquire(WaitSpec{WaitSpec::forever, {}});
  if (!state) throw Error(impl_->files->target.path, "lock", "wait ended without the lock", exit_code::software);
  return Lock(std::move(state));
}

std::optional<Lock> LockFile::try_acquire() {
  auto state = impl_->acquire(WaitSpec{WaitSpec::none, {}});
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

std::optional<Lock> LockFile::acquire_until(std::chrono::steady_clock::time_point deadline) {
  auto state = impl_->acquire(WaitSpec{WaitSpec::until, deadline});
  if (!state) return std::nullopt;
  return Lock(std::move(state));
}

Backend LockFile::backend() const noexcept { return impl_->backend; }
const std::string& LockFile::path() const noexcept { return impl_->files->target.path; }

}  // namespace holdfast
