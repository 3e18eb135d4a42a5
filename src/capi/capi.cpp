// The C API (include/holdfast/holdfast.h): a thin, exception-free shell over the C++ library.
//
// Every entry point runs its body through `guarded`, which turns any exception into HF_ERROR and
// the thread-local error state, so no C++ exception ever reaches a C caller. Nothing here adds
// behaviour: each call maps to exactly one library call, so the library's contracts (and its
// colleagues' changes) flow through unchanged.
#include "holdfast/holdfast.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "holdfast/atomic_write.hpp"
#include "holdfast/digest.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"
#include "holdfast/lock.hpp"
#include "holdfast/wait.hpp"

// A lock name on etcd (hf_lockfile_open_url): where, and as what.
struct RemoteName {
  holdfast::EtcdOptions options;
  std::string name;
};

struct hf_lockfile {
  std::optional<holdfast::LockFile> file;  // a lock path, or
  std::optional<RemoteName> remote;        // a name on etcd
};

struct hf_lock {
  // A one-shot lock owns its LockFile; a lock taken through hf_lockfile borrows the caller's. The
  // Lock is declared after the file it may borrow from, so it is destroyed first.
  std::optional<holdfast::LockFile> owned_file;
  std::optional<holdfast::Lock> lock;
  std::optional<holdfast::EtcdLock> etcd;  // instead of `lock`, for a name on etcd
};

namespace {

struct ErrorState {
  std::string message;
  std::string path;
  std::string log_tail;
  int err = 0;
  int exit_code = 0;
  int exit_status = -1;
};

thread_local ErrorState last_error;

void clear_error() noexcept {
  last_error.message.clear();
  last_error.path.clear();
  last_error.log_tail.clear();
  last_error.err = 0;
  last_error.exit_code = 0;
  last_error.exit_status = -1;
}

// Thrown by a wait whose cancel callback asked to stop.
struct Cancelled {};

// Records the exception being handled. Never throws: a failing string copy leaves what fits.
void record_current_exception() noexcept {
  try {
    throw;
  } catch (const holdfast::StartFailure& e) {
    last_error.err = e.error_number();
    last_error.exit_code = e.exit_code();
    last_error.exit_status = e.exit_status();
    try {
      last_error.message = e.what();
      last_error.path = e.path();
      last_error.log_tail = e.log_tail();
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory while copying; keep the codes
    }
  } catch (const holdfast::Error& e) {
    last_error.err = e.error_number();
    last_error.exit_code = e.exit_code();
    try {
      last_error.message = e.what();
      last_error.path = e.path();
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory while copying; keep the codes
    }
  } catch (const Cancelled&) {
    last_error.err = EINTR;
    last_error.exit_code = holdfast::exit_code::conflict;
    try {
      last_error.message = "interrupted";
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory while copying; keep the codes
    }
  } catch (const std::bad_alloc&) {
    last_error.err = ENOMEM;
    last_error.exit_code = holdfast::exit_code::os_error;
  } catch (const std::exception& e) {
    last_error.err = 0;
    last_error.exit_code = holdfast::exit_code::software;
    try {
      last_error.message = e.what();
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory while copying; keep the codes
    }
  } catch (...) {
    last_error.err = 0;
    last_error.exit_code = holdfast::exit_code::software;
  }
}

// Runs `body` (returning an HF_* status); any exception becomes HF_ERROR.
template <typename Body>
int guarded(Body&& body) noexcept {
  clear_error();
  try {
    return std::forward<Body>(body)();
  } catch (...) {
    record_current_exception();
    return HF_ERROR;
  }
}

[[noreturn]] void usage_error(const char* what) {
  throw holdfast::Error("", "C API", what, holdfast::exit_code::usage);
}

// A malloc'd copy, released by hf_free.
char* c_string(std::string_view text) {
  auto* out = static_cast<char*>(std::malloc(text.size() + 1));  // NOLINT(cppcoreguidelines-no-malloc)
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
  return out;
}

holdfast::Backend backend_of(int backend) {
  switch (backend) {
    case HF_BACKEND_AUTO: return holdfast::Backend::automatic;
    case HF_BACKEND_OFD: return holdfast::Backend::ofd;
    case HF_BACKEND_FLOCK: return holdfast::Backend::flock;
    case HF_BACKEND_EXCL: return holdfast::Backend::excl;
    case HF_BACKEND_LINK: return holdfast::Backend::link;
    case HF_BACKEND_SHM: return holdfast::Backend::shm;
    default: break;
  }
  usage_error("unknown backend");
}

int backend_code(holdfast::Backend backend) noexcept {
  switch (backend) {
    case holdfast::Backend::automatic: return HF_BACKEND_AUTO;
    case holdfast::Backend::ofd: return HF_BACKEND_OFD;
    case holdfast::Backend::flock: return HF_BACKEND_FLOCK;
    case holdfast::Backend::excl: return HF_BACKEND_EXCL;
    case holdfast::Backend::link: return HF_BACKEND_LINK;
    case holdfast::Backend::shm: return HF_BACKEND_SHM;
  }
  return HF_BACKEND_AUTO;
}

holdfast::LockOptions lock_options(int backend, int mode) {
  if (mode != HF_EXCLUSIVE && mode != HF_SHARED) usage_error("unknown lock mode");
  holdfast::LockOptions options;
  options.backend = backend_of(backend);
  options.mode = mode == HF_SHARED ? holdfast::LockMode::shared : holdfast::LockMode::exclusive;
  return options;
}

// Timeouts beyond this are "forever": a deadline computed from them would overflow the clock.
constexpr int64_t kForeverMs = int64_t{100} * 365 * 24 * 3600 * 1000;

int64_t clamp_timeout(int64_t timeout_ms) noexcept { return timeout_ms > kForeverMs ? -1 : timeout_ms; }

std::string text_or_empty(const char* text) { return text == nullptr ? std::string() : std::string(text); }

// Takes the lock through `file` with the C timeout convention; sets (*out)->lock on success.
int acquire_through(holdfast::LockFile& file, int64_t timeout_ms, hf_lock& out) {
  timeout_ms = clamp_timeout(timeout_ms);
  if (timeout_ms < 0) {
    out.lock.emplace(file.acquire());
    return HF_OK;
  }
  std::optional<holdfast::Lock> lock;
  if (timeout_ms == 0) {
    lock = file.try_acquire();
  } else {
    lock = file.acquire_until(std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
  if (!lock) return timeout_ms == 0 ? HF_BUSY : HF_TIMEOUT;
  out.lock.emplace(std::move(*lock));
  return HF_OK;
}

// The holder record stored as an etcd lock key's value: the same shape as `holdfast lock`'s
// (docs/ETCD.md), naming this process; there is no command.
std::string etcd_record(std::chrono::seconds ttl) {
  const holdfast::ProcessIdentity self = holdfast::self_identity();
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return nlohmann::json{{"holdfast", 1},
                        {"backend", "etcd"},
                        {"host", holdfast::this_host()},
                        {"processes", nlohmann::json::array({nlohmann::json{{"pid", self.pid},
                                                                             {"start_time", self.start_time},
                                                                             {"boot_id", self.boot_id},
                                                                             {"host", self.host},
                                                                             {"machine_id", self.machine_id}}})},
                        {"command", nlohmann::json::array()},
                        {"acquired_unix_ns", std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()},
                        {"ttl_s", ttl.count()}}
      .dump();
}

// Takes a name on etcd with the C timeout convention; sets out.etcd on success.
int acquire_remote(const RemoteName& remote, int64_t timeout_ms, hf_lock& out) {
  timeout_ms = clamp_timeout(timeout_ms);
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout_ms > 0) deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto lock = holdfast::EtcdLock::acquire(remote.options, remote.name, etcd_record(remote.options.ttl), timeout_ms == 0,
                                          deadline);
  if (!lock) return timeout_ms == 0 ? HF_BUSY : HF_TIMEOUT;
  out.etcd.emplace(std::move(*lock));
  return HF_OK;
}

// A field of hf_backend_options if the caller's struct (of `size` bytes) has it.
#define HF_OPTION(options, field) \
  ((options) != nullptr && (options)->size >= offsetof(hf_backend_options, field) + sizeof((options)->field) ? (options)->field : decltype((options)->field){})

// The cluster and credentials of `backend_url` and `options` (NULL: defaults); not the cancel
// callback, which only a lock's wait uses.
holdfast::EtcdOptions etcd_options(const char* backend_url, const hf_backend_options* options) {
  if (!holdfast::is_etcd_url(backend_url)) {
    throw holdfast::Error(backend_url, "backend", "not a backend URL (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)",
                          holdfast::exit_code::usage);
  }
  holdfast::EtcdOptions o = holdfast::parse_etcd_url(backend_url);
  if (const int64_t ttl_ms = HF_OPTION(options, ttl_ms); ttl_ms > 0) o.ttl = std::chrono::seconds((ttl_ms + 999) / 1000);
  o.cacert = text_or_empty(HF_OPTION(options, cacert));
  o.cert = text_or_empty(HF_OPTION(options, cert));
  o.key = text_or_empty(HF_OPTION(options, key));
  o.user = text_or_empty(HF_OPTION(options, user));
  o.password = text_or_empty(HF_OPTION(options, password));
  return o;
}

// hf_ensure's arguments as the library's options.
holdfast::EnsureOptions ensure_options(const char* ready, int64_t timeout_ms, const char* state_dir) {
  holdfast::EnsureOptions options;
  options.ready = holdfast::ReadySpec::parse(ready == nullptr ? "none" : ready);
  options.ready_timeout = std::chrono::milliseconds(timeout_ms < 0 || timeout_ms > kForeverMs ? kForeverMs : timeout_ms);
  options.state_dir = text_or_empty(state_dir);
  return options;
}

std::vector<std::string> command_of(const char* const* argv) {
  std::vector<std::string> command;
  for (const char* const* arg = argv; *arg != nullptr; ++arg) command.emplace_back(*arg);
  return command;
}

// hf_stop's arguments as the library's options.
holdfast::StopOptions stop_options(const char* state_dir, int signal, int64_t timeout_ms, int64_t kill_after_ms) {
  holdfast::StopOptions options;
  options.state_dir = text_or_empty(state_dir);
  if (signal != 0) options.signal = signal;
  if (timeout_ms >= 0) options.timeout = std::chrono::milliseconds(std::min(timeout_ms, kForeverMs));
  if (kill_after_ms >= 0) options.kill_after = std::chrono::milliseconds(std::min(kill_after_ms, kForeverMs));
  return options;
}

// Runs `body` (returning an HF_* status); the library's "still not ready / still running after
// the timeout" (exit code 75) becomes HF_TIMEOUT with the error state describing it.
template <typename Body>
int timeout_as_status(Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (const holdfast::StartFailure&) {
    throw;
  } catch (const holdfast::Error& e) {
    if (e.exit_code() != holdfast::exit_code::temp_fail) throw;
    last_error.message = e.what();
    last_error.path = e.path();
    last_error.exit_code = e.exit_code();
    return HF_TIMEOUT;
  }
}

void fill_instance(const holdfast::Instance& instance, hf_instance* out) {
  out->pid = instance.pid;
  out->start_time = instance.start_time;
  out->ready = instance.ready ? 1 : 0;
  out->started = instance.started ? 1 : 0;
  out->waited_ns = instance.waited.count();
}

void fill_stop(const holdfast::StopResult& result, hf_stop_result* out) {
  out->was_running = result.was_running ? 1 : 0;
  out->pid = result.pid;
  out->killed = result.killed ? 1 : 0;
}

nlohmann::json record_json(const std::string& json_text) {
  return nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
}

}  // namespace

extern "C" {

int hf_api_version(void) { return HOLDFAST_C_API_VERSION; }

const char* hf_error_message(void) { return last_error.message.c_str(); }
const char* hf_error_path(void) { return last_error.path.c_str(); }
int hf_error_errno(void) { return last_error.err; }
int hf_error_exit_code(void) { return last_error.exit_code; }
int hf_error_exit_status(void) { return last_error.exit_status; }
const char* hf_error_log_tail(void) { return last_error.log_tail.c_str(); }

void hf_free(void* pointer) { std::free(pointer); }  // NOLINT(cppcoreguidelines-no-malloc)

// ---- locks ----

int hf_lockfile_open(const char* path, int backend, int mode, hf_lockfile** out) {
  return guarded([&] {
    if (path == nullptr || out == nullptr) usage_error("path and out are required");
    *out = nullptr;
    auto file = holdfast::LockFile::open(path, lock_options(backend, mode));
    *out = new hf_lockfile{std::move(file), std::nullopt};
    return HF_OK;
  });
}

int hf_lockfile_open_url(const char* backend_url, const char* name, int mode, const hf_backend_options* options,
                         hf_lockfile** out) {
  return guarded([&] {
    if (backend_url == nullptr || name == nullptr || out == nullptr) usage_error("backend_url, name and out are required");
    *out = nullptr;
    RemoteName remote{etcd_options(backend_url, options), name};
    if (mode != HF_EXCLUSIVE) usage_error("a lock on etcd is exclusive only");
    if (name[0] == '\0') usage_error("empty lock name");
    if (hf_cancel_fn cancel = HF_OPTION(options, cancel); cancel != nullptr) {
      void* context = HF_OPTION(options, cancel_context);
      remote.options.cancel = [cancel, context] { return cancel(context) != 0; };
    }
    *out = new hf_lockfile{std::nullopt, std::move(remote)};
    return HF_OK;
  });
}

void hf_lockfile_close(hf_lockfile* lockfile) { delete lockfile; }

int hf_lockfile_acquire(hf_lockfile* lockfile, int64_t timeout_ms, hf_lock** out) {
  return guarded([&] {
    if (lockfile == nullptr || out == nullptr) usage_error("lockfile and out are required");
    *out = nullptr;
    auto handle = std::make_unique<hf_lock>();
    int status = lockfile->remote ? acquire_remote(*lockfile->remote, timeout_ms, *handle)
                                  : acquire_through(*lockfile->file, timeout_ms, *handle);
    if (status == HF_OK) *out = handle.release();
    return status;
  });
}

int hf_lock_acquire(const char* path, int backend, int mode, int64_t timeout_ms, hf_lock** out) {
  return guarded([&] {
    if (path == nullptr || out == nullptr) usage_error("path and out are required");
    *out = nullptr;
    auto handle = std::make_unique<hf_lock>();
    handle->owned_file.emplace(holdfast::LockFile::open(path, lock_options(backend, mode)));
    int status = acquire_through(*handle->owned_file, timeout_ms, *handle);
    if (status == HF_OK) *out = handle.release();
    return status;
  });
}

int hf_lock_release(hf_lock* lock) {
  if (lock == nullptr) return HF_OK;
  std::unique_ptr<hf_lock> owned(lock);
  return guarded([&] {
    if (owned->lock) owned->lock->release();
    owned->lock.reset();
    if (owned->etcd) owned->etcd->release();
    owned->etcd.reset();
    return HF_OK;
  });
}

void hf_lock_detach(hf_lock* lock) {
  if (lock == nullptr) return;
  std::unique_ptr<hf_lock> owned(lock);
  if (owned->etcd) {
    // After fork the child has none of the parent's threads (the lease's keeper): destroying the
    // grant would release the parent's lock and join a thread that is not there. It is
    // deliberately leaked, never released: that is what detaching means.
    new holdfast::EtcdLock(std::move(*owned->etcd));  // NOLINT(cppcoreguidelines-owning-memory)
    owned->etcd.reset();
    return;
  }
  if (!owned->lock) return;
  // A one-shot lock's own LockFile closes the descriptor the grant hangs on; a duplicate keeps
  // the open file description, and with it the kernel lock, alive. It is deliberately never
  // closed: that is what detaching means.
  if (owned->owned_file && owned->lock->fd() >= 0) (void)::fcntl(owned->lock->fd(), F_DUPFD_CLOEXEC, 0);
  owned->lock->detach();
}

uint64_t hf_lock_token(const hf_lock* lock) {
  if (lock != nullptr && lock->etcd) return lock->etcd->token();
  return lock != nullptr && lock->lock ? lock->lock->token() : 0;
}
int hf_lock_backend(const hf_lock* lock) {
  if (lock != nullptr && lock->etcd) return HF_BACKEND_ETCD;
  return lock != nullptr && lock->lock ? backend_code(lock->lock->backend()) : HF_BACKEND_AUTO;
}
int hf_lock_fd(const hf_lock* lock) {
  if (lock != nullptr && lock->etcd) return lock->etcd->lost_fd();
  return lock != nullptr && lock->lock ? lock->lock->fd() : -1;
}

int hf_holder(const char* path, int* state, char** json) {
  return guarded([&] {
    if (path == nullptr || state == nullptr) usage_error("path and state are required");
    auto info = holdfast::inspect_holder(path);
    switch (info.state) {
      case holdfast::HolderState::free: *state = HF_HOLDER_FREE; break;
      case holdfast::HolderState::held: *state = HF_HOLDER_HELD; break;
      case holdfast::HolderState::stale: *state = HF_HOLDER_STALE; break;
    }
    if (json != nullptr) {
      nlohmann::json j;
      j["state"] = info.state == holdfast::HolderState::free   ? "free"
                   : info.state == holdfast::HolderState::held ? "held"
                                                                : "stale";
      j["backend"] = std::string(holdfast::to_string(info.backend));
      j["kernel_lock_held"] = info.kernel_lock_held;
      j["kernel_lock_kinds"] = info.kernel_lock_kinds;
      j["reason"] = info.reason;
      j["record_corrupt"] = info.record_corrupt;
      j["record"] = info.record ? record_json(info.record->to_json()) : nlohmann::json(nullptr);
      *json = c_string(j.dump());
    }
    return HF_OK;
  });
}

int hf_lockfile_holder(const hf_lockfile* lockfile, int* state, char** json) {
  if (lockfile != nullptr && lockfile->file) return hf_holder(lockfile->file->path().c_str(), state, json);
  return guarded([&] {
    if (lockfile == nullptr || state == nullptr) usage_error("lockfile and state are required");
    const RemoteName& remote = *lockfile->remote;
    const holdfast::EtcdHolder h = holdfast::inspect_etcd_holder(remote.options, remote.name);
    *state = h.held ? HF_HOLDER_HELD : HF_HOLDER_FREE;
    if (json != nullptr) {
      // The shared object of `holdfast holder --json --backend`, plus hf_holder's fields.
      nlohmann::json j = nlohmann::json::parse(holdfast::etcd_holder_json(remote.name, h));
      const bool is_record = h.held && j["record"].is_object();
      j["kernel_lock_held"] = false;
      j["kernel_lock_kinds"] = nlohmann::json::array();
      j["record_corrupt"] = false;
      j["reason"] = !h.held ? fmt::format("no key under {}/{}/", remote.options.prefix, remote.name)
                    : is_record
                        ? fmt::format("key {} (token {}, lease {:x}, {} s left, {} waiting)", h.key, h.token, h.lease_id,
                                      h.ttl_remaining, h.waiters)
                        : fmt::format("key {} holds it with no holdfast record (e.g. etcdctl lock)", h.key);
      if (!is_record) j["record"] = nullptr;
      *json = c_string(j.dump());
    }
    return HF_OK;
  });
}

// ---- ensure ----

int hf_ensure(const char* name, const char* const* argv, const char* ready, int64_t timeout_ms,
              const char* state_dir, hf_instance* out, char** record_out) {
  return guarded([&] {
    if (name == nullptr || argv == nullptr || out == nullptr) usage_error("name, argv and out are required");
    const holdfast::EnsureOptions options = ensure_options(ready, timeout_ms, state_dir);
    return timeout_as_status([&] {
      const holdfast::Instance instance = holdfast::ensure_running(name, command_of(argv), options);
      fill_instance(instance, out);
      if (record_out != nullptr) *record_out = c_string(instance.record.to_json());
      return HF_OK;
    });
  });
}

int hf_ensure_url(const char* backend_url, const char* name, const char* const* argv, const char* ready,
                  int64_t timeout_ms, const char* state_dir, const hf_backend_options* options, hf_instance* out,
                  char** json) {
  return guarded([&] {
    if (backend_url == nullptr || name == nullptr || argv == nullptr || out == nullptr) {
      usage_error("backend_url, name, argv and out are required");
    }
    const holdfast::EtcdOptions etcd = etcd_options(backend_url, options);
    const holdfast::EnsureOptions ensure = ensure_options(ready, timeout_ms, state_dir);
    return timeout_as_status([&] {
      const auto started = std::chrono::steady_clock::now();
      const holdfast::EtcdEnsured result = holdfast::ensure_running(etcd, name, command_of(argv), ensure);
      if (result.local) {
        fill_instance(*result.local, out);
      } else {
        *out = hf_instance{};
        out->pid = result.elsewhere->pid;
        out->start_time = result.elsewhere->start_time;
        out->waited_ns = (std::chrono::steady_clock::now() - started).count();
      }
      if (json != nullptr) *json = c_string(holdfast::etcd_ensured_json(name, result));
      return HF_OK;
    });
  });
}

int hf_status(const char* name, const char* state_dir, int* state, char** json) {
  return guarded([&] {
    if (name == nullptr || state == nullptr) usage_error("name and state are required");
    auto status = holdfast::instance_status(name, text_or_empty(state_dir));
    // By name, so that states the library adds map to HF_INSTANCE_UNKNOWN (fail closed) rather
    // than to an unset value; "unknown" is the library's own name for an unverifiable instance.
    const std::string_view name_of_state = holdfast::to_string(status.state);
    *state = name_of_state == "ready"     ? HF_INSTANCE_READY
             : name_of_state == "running" ? HF_INSTANCE_RUNNING
             : name_of_state == "stopped" ? HF_INSTANCE_STOPPED
             : name_of_state == "stale"   ? HF_INSTANCE_STALE
                                          : HF_INSTANCE_UNKNOWN;
    if (json != nullptr) {
      nlohmann::json j;
      j["name"] = status.name;
      j["state"] = std::string(holdfast::to_string(status.state));
      j["lock_held"] = status.lock_held;
      j["reason"] = status.reason;
      j["record"] = status.record ? record_json(status.record->to_json()) : nlohmann::json(nullptr);
      *json = c_string(j.dump());
    }
    return HF_OK;
  });
}

int hf_status_url(const char* backend_url, const char* name, const char* state_dir,
                  const hf_backend_options* options, int* state, char** json) {
  return guarded([&] {
    if (backend_url == nullptr || name == nullptr || state == nullptr) usage_error("backend_url, name and state are required");
    const auto instance = holdfast::etcd_instance(etcd_options(backend_url, options), name);
    *state = instance ? HF_INSTANCE_RUNNING : HF_INSTANCE_STOPPED;
    if (instance && instance->host == holdfast::this_host()) {
      // Ready only as this state directory's verified instance whose main process keeps the lease.
      const auto local = holdfast::instance_status(name, text_or_empty(state_dir));
      if (local.state == holdfast::InstanceState::ready && local.record && local.record->process.pid == instance->pid &&
          local.record->process.start_time == instance->start_time) {
        *state = HF_INSTANCE_READY;
      }
    }
    if (json != nullptr) *json = c_string(holdfast::etcd_instance_json(name, instance));
    return HF_OK;
  });
}

int hf_stop(const char* name, const char* state_dir, int signal, int64_t timeout_ms, int64_t kill_after_ms,
            hf_stop_result* out) {
  return guarded([&] {
    if (name == nullptr || out == nullptr) usage_error("name and out are required");
    const holdfast::StopOptions options = stop_options(state_dir, signal, timeout_ms, kill_after_ms);
    return timeout_as_status([&] {
      fill_stop(holdfast::stop_instance(name, options), out);
      return HF_OK;
    });
  });
}

int hf_stop_url(const char* backend_url, const char* name, const char* state_dir, int signal, int64_t timeout_ms,
                int64_t kill_after_ms, const hf_backend_options* options, hf_stop_result* out) {
  return guarded([&] {
    if (backend_url == nullptr || name == nullptr || out == nullptr) usage_error("backend_url, name and out are required");
    const holdfast::EtcdOptions etcd = etcd_options(backend_url, options);
    const holdfast::StopOptions stop = stop_options(state_dir, signal, timeout_ms, kill_after_ms);
    return timeout_as_status([&] {
      fill_stop(holdfast::stop_instance(etcd, name, stop), out);
      return HF_OK;
    });
  });
}

// ---- durable hand-off ----

namespace {
int write_with(const char* path, const void* data, size_t size, int sync, int mode,
               std::optional<uint64_t> fence) {
  return guarded([&] {
    if (path == nullptr || (data == nullptr && size > 0)) usage_error("path and data are required");
    holdfast::WriteOptions options;
    options.sync = sync != 0;
    if (mode >= 0) options.mode = static_cast<mode_t>(mode);
    options.fence = fence;
    holdfast::atomic_write(path, std::string_view(static_cast<const char*>(data), size), options);
    return HF_OK;
  });
}
}  // namespace

int hf_write(const char* path, const void* data, size_t size, int sync, int mode) {
  return write_with(path, data, size, sync, mode, std::nullopt);
}

int hf_write_fenced(const char* path, const void* data, size_t size, int sync, int mode, uint64_t token) {
  static_assert(HF_EXIT_FENCED == holdfast::exit_code::fenced);
  return write_with(path, data, size, sync, mode, token);
}

int hf_accepted_fence(const char* path, uint64_t* token) {
  return guarded([&] {
    if (path == nullptr || token == nullptr) usage_error("path and token are required");
    *token = holdfast::accepted_fence(path);
    return HF_OK;
  });
}

int hf_wait_like(const char* path, const char* like, int64_t timeout_ms, int64_t interval_ms, const char* via,
                 hf_cancel_fn cancel, void* cancel_context, char** difference) {
  return guarded([&] {
    if (path == nullptr || like == nullptr) usage_error("path and like are required");
    if (difference != nullptr) *difference = nullptr;
    holdfast::WaitOptions options;
    options.timeout = std::chrono::milliseconds(timeout_ms < 0 ? kForeverMs : std::min(timeout_ms, kForeverMs));
    if (interval_ms > 0) options.interval = std::chrono::milliseconds(interval_ms);
    options.via = text_or_empty(via);
    if (cancel != nullptr) {
      options.on_check = [cancel, cancel_context](const holdfast::Observation&, std::chrono::milliseconds) {
        if (cancel(cancel_context) != 0) throw Cancelled{};
      };
    }
    auto expected = holdfast::expected_from_file(like, {holdfast::DigestAlg::xxh128});
    auto result = holdfast::wait_for_content(path, expected, options);
    if (result.matched) return HF_OK;
    if (difference != nullptr) *difference = c_string(result.last.differs);
    return HF_TIMEOUT;
  });
}

int hf_digest_file(const char* path, const char* alg, char** digest, uint64_t* size) {
  return guarded([&] {
    if (path == nullptr || digest == nullptr) usage_error("path and digest are required");
    *digest = nullptr;
    auto parsed = holdfast::parse_digest_alg(alg == nullptr ? "xxh128" : alg);
    if (!parsed) usage_error("unknown digest algorithm");
    auto content = holdfast::digest_file(path, *parsed);
    *digest = c_string(content.digest.to_string());
    if (size != nullptr) *size = content.size;
    return HF_OK;
  });
}

int hf_digest_bytes(const void* data, size_t size, const char* alg, char** digest) {
  return guarded([&] {
    if ((data == nullptr && size > 0) || digest == nullptr) usage_error("data and digest are required");
    *digest = nullptr;
    auto parsed = holdfast::parse_digest_alg(alg == nullptr ? "xxh128" : alg);
    if (!parsed) usage_error("unknown digest algorithm");
    auto result = holdfast::digest_bytes(*parsed, std::string_view(static_cast<const char*>(data), size));
    *digest = c_string(result.to_string());
    return HF_OK;
  });
}

}  // extern "C"
