// holdfast._native: the Python binding of the C API (include/holdfast/holdfast.h), nothing more.
//
// Everything Python-shaped (filelock's API, exceptions, dataclasses) lives in the pure-Python
// package beside this module; this file only moves arguments across the C ABI, releases the GIL
// around every call that may block, and keeps blocking waits interruptible: a wait runs in bounded
// slices, and between slices the GIL is taken back and pending signals are run, so Ctrl-C raises
// KeyboardInterrupt in a blocked acquire within one slice.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "holdfast/holdfast.h"

namespace py = pybind11;

namespace {

// The longest a blocking call runs without looking at Python's pending signals.
constexpr int64_t kSliceMs = 100;

// Raises the holdfast exception for the error the C API just reported on this thread.
[[noreturn]] void raise_last_error() {
  py::object make = py::module_::import("holdfast._errors").attr("_from_native");
  py::object exc = make(std::string(hf_error_message()), std::string(hf_error_path()), hf_error_errno(),
                        hf_error_exit_code(), hf_error_exit_status(), std::string(hf_error_log_tail()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

// Takes a char* the C API allocated, returns it as a Python str and frees it.
std::string take_string(char* text) {
  std::string out = text == nullptr ? std::string() : std::string(text);
  hf_free(text);
  return out;
}

class Lock {
 public:
  explicit Lock(hf_lock* handle) : handle_(handle) {}
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  ~Lock() { hf_lock_release(handle_); }

  // Releases the grant; idempotent.
  void release() {
    if (handle_ == nullptr) return;
    hf_lock* handle = handle_;
    handle_ = nullptr;
    int status = 0;
    {
      py::gil_scoped_release unlocked;
      status = hf_lock_release(handle);
    }
    if (status == HF_ERROR) raise_last_error();
  }
  // Forgets the grant without releasing it (a forked child: the lock stays with the parent).
  void detach() {
    hf_lock_detach(handle_);
    handle_ = nullptr;
  }
  bool held() const { return handle_ != nullptr; }
  uint64_t token() const { return hf_lock_token(handle_); }
  int backend() const { return hf_lock_backend(handle_); }
  int fd() const { return hf_lock_fd(handle_); }

 private:
  hf_lock* handle_;
};

int wait_cancelled(void* context);

// A backend URL's TTL (seconds; <= 0: the default), TLS files and credentials ("": none), kept
// alive while the C API reads them through hf_backend_options.
struct BackendArgs {
  double ttl_s;
  std::string cacert, cert, key, user, password;

  hf_backend_options options() const {
    hf_backend_options options{};
    options.size = sizeof options;
    options.ttl_ms = ttl_s > 0 ? static_cast<int64_t>(std::ceil(ttl_s * 1000)) : 0;
    options.cacert = cacert.empty() ? nullptr : cacert.c_str();
    options.cert = cert.empty() ? nullptr : cert.c_str();
    options.key = key.empty() ? nullptr : key.c_str();
    options.user = user.empty() ? nullptr : user.c_str();
    options.password = password.empty() ? nullptr : password.c_str();
    return options;
  }
};

class LockFile {
 public:
  // A lock name on a backend URL (etcd://...; hf_lockfile_open_url). A wait on it is one call
  // (slicing it would give up the place in etcd's queue at every slice); Ctrl-C still ends it,
  // through the cancel callback, within about a second.
  static std::unique_ptr<LockFile> open_url(const std::string& url, const std::string& name, double ttl_s,
                                            const std::string& cacert, const std::string& cert, const std::string& key,
                                            const std::string& user, const std::string& password) {
    const BackendArgs args{ttl_s, cacert, cert, key, user, password};
    hf_backend_options options = args.options();
    options.cancel = wait_cancelled;
    hf_lockfile* handle = nullptr;
    int status = 0;
    {
      py::gil_scoped_release unlocked;
      status = hf_lockfile_open_url(url.c_str(), name.c_str(), 0, &options, &handle);
    }
    if (status != HF_OK) raise_last_error();
    return std::unique_ptr<LockFile>(new LockFile(handle));
  }

  LockFile(const std::string& path, int backend, int mode) {
    int status = 0;
    {
      py::gil_scoped_release unlocked;
      status = hf_lockfile_open(path.c_str(), backend, mode, &handle_);
    }
    if (status != HF_OK) raise_last_error();
  }
  LockFile(const LockFile&) = delete;
  LockFile& operator=(const LockFile&) = delete;
  ~LockFile() {
    if (grant_ != nullptr) hf_lock_release(grant_);
    hf_lockfile_close(handle_);
  }

  // One attempt, then (timeout_s != 0) waits in slices: < 0 forever, else at most timeout_s
  // seconds. Returns the grant, or None when the wait ended without it. Raises on errors and
  // propagates exceptions from signal handlers (KeyboardInterrupt).
  std::unique_ptr<Lock> acquire(double timeout_s) {
    hf_lock* out = take(timeout_s);
    return out == nullptr ? nullptr : std::make_unique<Lock>(out);
  }

  // The same grant kept inside this object (what holdfast.FileLock uses: no Python object per
  // grant). True if held; False when the wait ended without it.
  bool hold(double timeout_s) {
    if (grant_ != nullptr) throw std::runtime_error("this LockFile already holds its grant");
    grant_ = take(timeout_s);
    return grant_ != nullptr;
  }
  // Releases the held grant; idempotent. A kernel unlock never blocks, so it keeps the GIL
  // (dropping and retaking it cost more than the unlock); a dotlock's renames release it.
  void unhold() {
    if (grant_ == nullptr) return;
    hf_lock* grant = grant_;
    grant_ = nullptr;
    const int backend = hf_lock_backend(grant);
    int status = 0;
    if (backend == HF_BACKEND_FLOCK || backend == HF_BACKEND_OFD) {
      status = hf_lock_release(grant);
    } else {
      py::gil_scoped_release unlocked;
      status = hf_lock_release(grant);
    }
    if (status == HF_ERROR) raise_last_error();
  }
  // Forgets the held grant without releasing it (a forked child).
  void forget() {
    hf_lock_detach(grant_);
    grant_ = nullptr;
  }
  bool holding() const { return grant_ != nullptr; }
  uint64_t token() const { return hf_lock_token(grant_); }
  // The held grant's descriptor: for etcd, readable once the lock is lost; -1 if not held.
  int fd() const { return grant_ == nullptr ? -1 : hf_lock_fd(grant_); }
  // (state, json) of who holds this lock now (hf_lockfile_holder): for etcd, one linearizable read.
  std::tuple<int, std::string> holder() const {
    int state = 0;
    char* json = nullptr;
    int status = 0;
    {
      py::gil_scoped_release unlocked;
      status = hf_lockfile_holder(handle_, &state, &json);
    }
    if (status != HF_OK) raise_last_error();
    return {state, take_string(json)};
  }

 private:
  explicit LockFile(hf_lockfile* remote) : handle_(remote), remote_(true) {}

  hf_lock* take(double timeout_s) {
    hf_lock* out = nullptr;
    if (remote_) return take_remote(timeout_s);
    int status = hf_lockfile_acquire(handle_, 0, &out);  // the uncontended case, GIL held: cheapest
    if (status == HF_OK) return out;
    if (status == HF_ERROR) raise_last_error();
    if (timeout_s == 0) return nullptr;
    // Beyond ~30 years is forever: a deadline that far would overflow the clock.
    const bool forever = timeout_s < 0 || std::isnan(timeout_s) || timeout_s > 1e9;
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(forever ? 0.0 : timeout_s));
    for (;;) {
      int64_t slice = kSliceMs;
      if (!forever) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return nullptr;
        slice = std::min<int64_t>(slice, left.count());
      }
      {
        py::gil_scoped_release unlocked;
        status = hf_lockfile_acquire(handle_, slice, &out);
      }
      if (status == HF_OK) return out;
      if (status == HF_ERROR) raise_last_error();
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
  }

  hf_lock* take_remote(double timeout_s) {
    const bool forever = timeout_s < 0 || std::isnan(timeout_s) || timeout_s > 1e9;
    const int64_t ms = forever ? -1 : timeout_s == 0 ? 0 : std::max<int64_t>(1, std::llround(timeout_s * 1000));
    hf_lock* out = nullptr;
    int status = 0;
    {
      py::gil_scoped_release unlocked;
      status = hf_lockfile_acquire(handle_, ms, &out);
    }
    if (status == HF_OK) return out;
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();  // KeyboardInterrupt from the cancel check
    if (status == HF_ERROR) raise_last_error();
    return nullptr;
  }

  hf_lockfile* handle_ = nullptr;
  hf_lock* grant_ = nullptr;  // hold()'s grant
  bool remote_ = false;       // a name on a backend URL (etcd)
};

std::tuple<int, std::string> holder(const std::string& path) {
  int state = 0;
  char* json = nullptr;
  int status = 0;
  {
    py::gil_scoped_release unlocked;
    status = hf_holder(path.c_str(), &state, &json);
  }
  if (status != HF_OK) raise_last_error();
  return {state, take_string(json)};
}

// (status, pid, start_time, ready, started, waited_ns, record_json); status is HF_OK or HF_TIMEOUT.
// argv as the C API takes it: pointers into `argv`, ending with NULL.
std::vector<const char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<const char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& arg : argv) args.push_back(arg.c_str());
  args.push_back(nullptr);
  return args;
}

// hf_ensure's and hf_ensure_url's outcome as the tuple _ensure.py reads; takes `text`.
py::tuple ensured(int status, const hf_instance& instance, char* text) {
  if (status == HF_ERROR) raise_last_error();
  if (status == HF_TIMEOUT) return py::make_tuple(status, std::string(hf_error_message()));
  return py::make_tuple(status, instance.pid, instance.start_time, instance.ready != 0, instance.started != 0,
                        instance.waited_ns, take_string(text));
}

// hf_stop's and hf_stop_url's outcome as the tuple _ensure.py reads.
py::tuple stopped(int rc, const hf_stop_result& result) {
  if (rc == HF_ERROR) raise_last_error();
  if (rc == HF_TIMEOUT) return py::make_tuple(rc, std::string(hf_error_message()));
  return py::make_tuple(rc, result.was_running != 0, result.pid, result.killed != 0);
}

py::tuple ensure(const std::string& name, const std::vector<std::string>& argv, const std::string& ready,
                 int64_t timeout_ms, const std::string& state_dir) {
  const std::vector<const char*> args = c_argv(argv);
  hf_instance instance{};
  char* record = nullptr;
  int status = 0;
  {
    py::gil_scoped_release unlocked;
    status = hf_ensure(name.c_str(), args.data(), ready.c_str(), timeout_ms, state_dir.c_str(), &instance, &record);
  }
  return ensured(status, instance, record);
}

std::tuple<int, std::string> status(const std::string& name, const std::string& state_dir) {
  int state = 0;
  char* json = nullptr;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_status(name.c_str(), state_dir.c_str(), &state, &json);
  }
  if (rc != HF_OK) raise_last_error();
  return {state, take_string(json)};
}

py::tuple stop(const std::string& name, const std::string& state_dir, int signal, int64_t timeout_ms,
               int64_t kill_after_ms) {
  hf_stop_result result{};
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_stop(name.c_str(), state_dir.c_str(), signal, timeout_ms, kill_after_ms, &result);
  }
  return stopped(rc, result);
}

// As ensure(), on a backend URL (hf_ensure_url): the last item is the JSON of `holdfast ensure
// --json --backend` (host, token, started, local, ...).
py::tuple ensure_url(const std::string& url, const std::string& name, const std::vector<std::string>& argv,
                     const std::string& ready, int64_t timeout_ms, const std::string& state_dir,
                     const BackendArgs& backend) {
  const std::vector<const char*> args = c_argv(argv);
  const hf_backend_options options = backend.options();
  hf_instance instance{};
  char* json = nullptr;
  int status = 0;
  {
    py::gil_scoped_release unlocked;
    status = hf_ensure_url(url.c_str(), name.c_str(), args.data(), ready.c_str(), timeout_ms, state_dir.c_str(),
                           &options, &instance, &json);
  }
  return ensured(status, instance, json);
}

// (state, json) of NAME on a backend URL (hf_status_url).
std::tuple<int, std::string> status_url(const std::string& url, const std::string& name, const std::string& state_dir,
                                        const BackendArgs& backend) {
  const hf_backend_options options = backend.options();
  int state = 0;
  char* json = nullptr;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_status_url(url.c_str(), name.c_str(), state_dir.c_str(), &options, &state, &json);
  }
  if (rc != HF_OK) raise_last_error();
  return {state, take_string(json)};
}

// As stop(), on a backend URL (hf_stop_url).
py::tuple stop_url(const std::string& url, const std::string& name, const std::string& state_dir, int signal,
                   int64_t timeout_ms, int64_t kill_after_ms, const BackendArgs& backend) {
  const hf_backend_options options = backend.options();
  hf_stop_result result{};
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_stop_url(url.c_str(), name.c_str(), state_dir.c_str(), signal, timeout_ms, kill_after_ms, &options, &result);
  }
  return stopped(rc, result);
}

// fence: None for a plain write, else the fencing token (hf_write_fenced, HOLDFAST_C_1.1).
void write_file(const std::string& path, const py::bytes& data, bool sync, int mode, std::optional<uint64_t> fence) {
  std::string bytes = data;  // a copy: the GIL is released while writing
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = fence ? hf_write_fenced(path.c_str(), bytes.data(), bytes.size(), sync ? 1 : 0, mode, *fence)
               : hf_write(path.c_str(), bytes.data(), bytes.size(), sync ? 1 : 0, mode);
  }
  if (rc != HF_OK) raise_last_error();
}

uint64_t accepted_fence(const std::string& path) {
  uint64_t token = 0;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_accepted_fence(path.c_str(), &token);
  }
  if (rc != HF_OK) raise_last_error();
  return token;
}

// Called by the wait after every check, without the GIL.
int wait_cancelled(void* /*context*/) {
  py::gil_scoped_acquire locked;
  return PyErr_CheckSignals() != 0 ? 1 : 0;
}

std::tuple<bool, std::string> wait_like(const std::string& path, const std::string& like, int64_t timeout_ms,
                                        int64_t interval_ms, const std::string& via) {
  char* difference = nullptr;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_wait_like(path.c_str(), like.c_str(), timeout_ms, interval_ms, via.c_str(), wait_cancelled, nullptr,
                      &difference);
  }
  if (rc == HF_ERROR) {
    if (PyErr_Occurred() != nullptr) throw py::error_already_set();  // KeyboardInterrupt from the check
    raise_last_error();
  }
  return {rc == HF_OK, take_string(difference)};
}

std::tuple<std::string, uint64_t> digest_file(const std::string& path, const std::string& alg) {
  char* digest = nullptr;
  uint64_t size = 0;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_digest_file(path.c_str(), alg.c_str(), &digest, &size);
  }
  if (rc != HF_OK) raise_last_error();
  return {take_string(digest), size};
}

std::string digest_bytes(const py::bytes& data, const std::string& alg) {
  std::string bytes = data;
  char* digest = nullptr;
  int rc = 0;
  {
    py::gil_scoped_release unlocked;
    rc = hf_digest_bytes(bytes.data(), bytes.size(), alg.c_str(), &digest);
  }
  if (rc != HF_OK) raise_last_error();
  return take_string(digest);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "holdfast C API binding (internal; use the holdfast package)";
  m.attr("API_VERSION") = hf_api_version();
  m.attr("BACKEND_AUTO") = static_cast<int>(HF_BACKEND_AUTO);
  m.attr("BACKEND_OFD") = static_cast<int>(HF_BACKEND_OFD);
  m.attr("BACKEND_FLOCK") = static_cast<int>(HF_BACKEND_FLOCK);
  m.attr("BACKEND_EXCL") = static_cast<int>(HF_BACKEND_EXCL);
  m.attr("BACKEND_LINK") = static_cast<int>(HF_BACKEND_LINK);
  m.attr("BACKEND_ETCD") = static_cast<int>(HF_BACKEND_ETCD);
  m.attr("OK") = static_cast<int>(HF_OK);
  m.attr("TIMEOUT") = static_cast<int>(HF_TIMEOUT);

  py::class_<Lock>(m, "Lock")
      .def("release", &Lock::release)
      .def("detach", &Lock::detach)
      .def_property_readonly("held", &Lock::held)
      .def_property_readonly("token", &Lock::token)
      .def_property_readonly("backend", &Lock::backend)
      .def_property_readonly("fd", &Lock::fd);
  py::class_<LockFile>(m, "LockFile")
      .def(py::init<const std::string&, int, int>(), py::arg("path"), py::arg("backend"), py::arg("mode"))
      .def_static("open_url", &LockFile::open_url, py::arg("url"), py::arg("name"), py::arg("ttl"), py::arg("cacert"),
                  py::arg("cert"), py::arg("key"), py::arg("user"), py::arg("password"))
      .def("acquire", &LockFile::acquire, py::arg("timeout"))
      .def("hold", &LockFile::hold, py::arg("timeout"))
      .def("unhold", &LockFile::unhold)
      .def("forget", &LockFile::forget)
      .def_property_readonly("holding", &LockFile::holding)
      .def_property_readonly("token", &LockFile::token)
      .def_property_readonly("fd", &LockFile::fd)
      .def("holder", &LockFile::holder);
  m.def("holder", &holder, py::arg("path"));
  m.def("ensure", &ensure, py::arg("name"), py::arg("argv"), py::arg("ready"), py::arg("timeout_ms"),
        py::arg("state_dir"));
  m.def("status", &status, py::arg("name"), py::arg("state_dir"));
  m.def("stop", &stop, py::arg("name"), py::arg("state_dir"), py::arg("signal"), py::arg("timeout_ms"),
        py::arg("kill_after_ms"));
  py::class_<BackendArgs>(m, "BackendArgs")
      .def(py::init([](double ttl, std::string cacert, std::string cert, std::string key, std::string user,
                       std::string password) {
             return BackendArgs{ttl, std::move(cacert), std::move(cert), std::move(key), std::move(user),
                                std::move(password)};
           }),
           py::arg("ttl"), py::arg("cacert"), py::arg("cert"), py::arg("key"), py::arg("user"), py::arg("password"));
  m.def("ensure_url", &ensure_url, py::arg("url"), py::arg("name"), py::arg("argv"), py::arg("ready"),
        py::arg("timeout_ms"), py::arg("state_dir"), py::arg("backend"));
  m.def("status_url", &status_url, py::arg("url"), py::arg("name"), py::arg("state_dir"), py::arg("backend"));
  m.def("stop_url", &stop_url, py::arg("url"), py::arg("name"), py::arg("state_dir"), py::arg("signal"),
        py::arg("timeout_ms"), py::arg("kill_after_ms"), py::arg("backend"));
  m.def("write", &write_file, py::arg("path"), py::arg("data"), py::arg("sync"), py::arg("mode"),
        py::arg("fence") = py::none());
  m.def("accepted_fence", &accepted_fence, py::arg("path"));
  m.def("wait_like", &wait_like, py::arg("path"), py::arg("like"), py::arg("timeout_ms"), py::arg("interval_ms"),
        py::arg("via"));
  m.def("digest_file", &digest_file, py::arg("path"), py::arg("alg"));
  m.def("digest_bytes", &digest_bytes, py::arg("data"), py::arg("alg"));
}
