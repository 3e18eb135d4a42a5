// Names, state directory, OFD lock helpers, records and readiness specs for ensure.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"
#include "sys/file.hpp"

namespace holdfast {

using ensure_detail::Paths;

// ---------------------------------------------------------------------------------------------
// names and state directory

void validate_instance_name(std::string_view name) {
  auto bad = [&](const std::string& why) {
    return Error(std::string(name), "invalid instance name", why, exit_code::usage);
  };
  if (name.empty()) throw bad("empty");
  if (name.size() > 64) throw bad("longer than 64 characters");
  if (name.front() == '.') throw bad("must not start with '.'");
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) throw bad("only A-Z a-z 0-9 . _ - are allowed");
  }
}

namespace {

// Creates `dir` (0700) if missing; with `parents`, creates missing parents too (0755 as mkdir -p).
void make_dir(const std::string& dir, bool parents) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) throw Error(ENOTDIR, dir, "state directory");
    return;
  }
  if (errno != ENOENT) throw Error(errno, dir, "state directory");
  if (parents) {
    auto parent = sys::dirname_of(dir);
    if (parent != dir && parent != "." && parent != "/") make_dir(parent, true);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw Error(errno, dir, "cannot create state directory");
  }
}

// A default state directory must be ours alone: a directory another user controls could be used
// to feed us forged records or swap lock files.
void check_private_dir(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw Error(errno, dir, "state directory");
  if (!S_ISDIR(st.st_mode)) {
    throw Error(dir, "unsafe state directory", "not a directory (symlink?)", exit_code::no_perm);
  }
  if (st.st_uid != ::geteuid()) {
    throw Error(dir, "unsafe state directory",
                "owned by uid " + std::to_string(st.st_uid) + ", not " + std::to_string(::geteuid()),
                exit_code::no_perm);
  }
  if ((st.st_mode & 022) != 0) {
    throw Error(dir, "unsafe state directory", "writable by group or others", exit_code::no_perm);
  }
}

}  // namespace

std::string default_state_dir() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string dir;
  if (xdg != nullptr && *xdg == '/') {
    dir = std::string(xdg) + "/holdfast";
  } else if (::geteuid() == 0) {
    dir = "/run/holdfast";
  } else {
    dir = "/tmp/holdfast-" + std::to_string(::geteuid());
  }
  make_dir(dir, false);
  check_private_dir(dir);
  return dir;
}

std::string resolve_state_dir(const std::string& dir) {
  if (dir.empty()) return default_state_dir();
  // Absolute: the record, log and NOTIFY_SOCKET paths must survive a daemon's chdir.
  std::string abs = dir;
  if (abs.front() != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) == nullptr) throw Error(errno, dir, "cannot resolve state directory");
    abs = std::string(cwd) + "/" + dir;
  }
  while (abs.size() > 1 && abs.back() == '/') abs.pop_back();
  make_dir(abs, true);
  return abs;
}

// ---------------------------------------------------------------------------------------------
// readiness specs

ReadySpec ReadySpec::parse(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return Error(std::string(text), "invalid --ready", why, exit_code::usage);
  };
  ReadySpec spec;
  auto rest_after = [&](std::string_view prefix) { return text.substr(prefix.size()); };
  if (text.empty() || text == "none") return spec;
  if (text == "notify") {
    spec.kind = Kind::notify;
  } else if (text.starts_with("fd:")) {
    auto num = rest_after("fd:");
    int n = 0;
    if (num.empty() || num.size() > 6) throw bad("expected fd:N");
    for (char c : num) {
      if (c < '0' || c > '9') throw bad("expected fd:N");
      n = n * 10 + (c - '0');
    }
    if (n < 3) throw bad("N must be 3 or more (0-2 are stdin/stdout/stderr)");
    spec.kind = Kind::fd;
    spec.fd = n;
  } else if (text.starts_with("tcp:")) {
    auto hp = rest_after("tcp:");
    auto colon = hp.rfind(':');
    if (colon == std::string_view::npos || colon == 0) throw bad("expected tcp:HOST:PORT");
    std::string host(hp.substr(0, colon));
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    auto port_text = hp.substr(colon + 1);
    long port = 0;
    if (port_text.empty() || port_text.size() > 5) throw bad("bad port");
    for (char c : port_text) {
      if (c < '0' || c > '9') throw bad("bad port");
      port = port * 10 + (c - '0');
    }
    if (port < 1 || port > 65535) throw bad("port out of range");
    spec.kind = Kind::tcp;
    spec.host = host;
    spec.port = static_cast<uint16_t>(port);
  } else if (text.starts_with("unix:")) {
    spec.kind = Kind::unix_socket;
    spec.path = std::string(rest_after("unix:"));
    if (spec.path.empty()) throw bad("expected unix:PATH");
  } else if (text.starts_with("file:")) {
    spec.kind = Kind::file;
    spec.path = std::string(rest_after("file:"));
    if (spec.path.empty()) throw bad("expected file:PATH");
  } else {
    throw bad("expected notify, fd:N, tcp:HOST:PORT, unix:PATH, file:PATH or none");
  }
  return spec;
}

std::string ReadySpec::to_string() const {
  switch (kind) {
    case Kind::none: return "none";
    case Kind::notify: return "notify";
    case Kind::fd: return "fd:" + std::to_string(fd);
    case Kind::tcp:
      return "tcp:" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
             std::to_string(port);
    case Kind::unix_socket: return "unix:" + path;
    case Kind::file: return "file:" + path;
  }
  return "none";
}

// ---------------------------------------------------------------------------------------------
// records

std::string_view to_string(RecordState state) noexcept {
  switch (state) {
    case RecordState::starting: return "starting";
    case RecordState::ready: return "ready";
    case RecordState::failed: return "failed";
    case RecordState::stopped: return "stopped";
  }
  return "unknown";
}

std::string_view to_string(InstanceState state) noexcept {
  switch (state) {
    case InstanceState::ready: return "ready";
    case InstanceState::running: return "running";
    case InstanceState::stopped: return "stopped";
    case InstanceState::stale: return "stale";
  }
  return "unknown";
}

std::string InstanceRecord::to_json() const {
  nlohmann::json j;
  j["name"] = name;
  j["pid"] = process.pid;
  j["start_time"] = process.start_time;
  j["boot_id"] = process.boot_id;
  j["host"] = process.host;
  j["command"] = command;
  j["state"] = std::string(to_string(state));
  j["ready_mode"] = ready_mode;
  j["status"] = status;
  j["attempt"] = attempt;
  j["spawned_unix_ns"] = spawned_unix_ns;
  j["ready_unix_ns"] = ready_unix_ns;
  j["attempt_started_boot_ns"] = attempt_started_boot_ns;
  j["attempt_ended_boot_ns"] = attempt_ended_boot_ns;
  j["launcher_pid"] = launcher_pid;
  j["forked"] = forked;
  j["failure"] = failure;
  j["exit_status"] = exit_status;
  j["log"] = log_path;
  return j.dump();
}

std::optional<InstanceRecord> InstanceRecord::parse(std::string_view text) {
  try {
    auto j = nlohmann::json::parse(text);
    InstanceRecord r;
    r.name = j.at("name").get<std::string>();
    r.process.pid = j.at("pid").get<pid_t>();
    r.process.start_time = j.at("start_time").get<uint64_t>();
    r.process.boot_id = j.at("boot_id").get<std::string>();
    r.process.host = j.at("host").get<std::string>();
    r.command = j.at("command").get<std::vector<std::string>>();
    auto state = j.at("state").get<std::string>();
    if (state == "starting") r.state = RecordState::starting;
    else if (state == "ready") r.state = RecordState::ready;
    else if (state == "failed") r.state = RecordState::failed;
    else if (state == "stopped") r.state = RecordState::stopped;
    else return std::nullopt;
    r.ready_mode = j.at("ready_mode").get<std::string>();
    r.status = j.value("status", "");
    r.attempt = j.at("attempt").get<uint64_t>();
    r.spawned_unix_ns = j.value("spawned_unix_ns", int64_t{0});
    r.ready_unix_ns = j.value("ready_unix_ns", int64_t{0});
    r.attempt_started_boot_ns = j.value("attempt_started_boot_ns", int64_t{0});
    r.attempt_ended_boot_ns = j.value("attempt_ended_boot_ns", int64_t{0});
    r.launcher_pid = j.value("launcher_pid", pid_t{0});
    r.forked = j.value("forked", false);
    r.failure = j.value("failure", "");
    r.exit_status = j.value("exit_status", -1);
    r.log_path = j.value("log", "");
    return r;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

}  // namespace holdfast

namespace holdfast::ensure_detail {

Paths paths_for(const std::string& dir, const std::string& name) {
  Paths p;
  p.dir = dir;
  p.name = name;
  std::string base = dir + "/" + name;
  p.lock = base + ".lock";
  p.spawn_lock = base + ".spawn.lock";
  p.record = base + ".json";
  p.log = base + ".log";
  p.notify = base + ".notify";
  return p;
}

sys::UniqueFd open_lock_file(const std::string& path) {
  return sys::open_or_throw(AT_FDCWD, path, O_RDWR | O_CREAT | O_NOCTTY, 0644, "cannot open lock file");
}

int ofd_try_lock(int fd) noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  for (;;) {
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return 0;
    if (errno == EINTR) continue;
    return (errno == EAGAIN || errno == EACCES) ? -EAGAIN : -errno;
  }
}

int ofd_held_elsewhere(int fd) noexcept {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
  return fl.l_type == F_UNLCK ? 0 : 1;
}

bool lock_held(const std::string& path) {
  // GETLK needs no write access, so a read-only open serves status for any reader.
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY);
  if (fd == -ENOENT) return false;
  if (fd < 0) throw Error(-fd, path, "cannot open lock file");
  sys::UniqueFd owned(fd);
  int held = ofd_held_elsewhere(fd);
  if (held < 0) throw Error(-held, path, "cannot test lock (F_OFD_GETLK)");
  return held == 1;
}

std::optional<InstanceRecord> read_record(const std::string& path) {
  auto text = sys::read_file(path, 1 << 20);
  if (!text) {
    if (errno == ENOENT) return std::nullopt;
    throw Error(errno, path, "cannot read instance record");
  }
  return InstanceRecord::parse(*text);
}

int write_record_nothrow(const std::string& path, const InstanceRecord& record) noexcept {
  try {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".tmp-%016llx",
                  static_cast<unsigned long long>(sys::random_u64()));
    std::string tmp = path + suffix;
    int fd = sys::open_nothrow(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY, 0644);
    if (fd < 0) return fd;
    sys::UniqueFd owned(fd);
    std::string text = record.to_json();
    text += '\n';
    // The state directory is runtime state (tmpfs in the default locations): readers need
    // atomicity, not durability, so no fsync.
    int rc = sys::write_all(fd, text);
    if (rc == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) rc = -errno;
    if (rc != 0) ::unlink(tmp.c_str());
    return rc;
  } catch (...) {
    return -ENOMEM;
  }
}

void write_record(const std::string& path, const InstanceRecord& record) {
  int rc = write_record_nothrow(path, record);
  if (rc != 0) throw Error(-rc, path, "cannot write instance record");
}

std::string log_tail(const std::string& path, int lines) {
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY);
  if (fd < 0) return {};
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return {};
  off_t start = st.st_size > 65536 ? st.st_size - 65536 : 0;
  std::string text(static_cast<size_t>(st.st_size - start), '\0');
  ssize_t n = ::pread(fd, text.data(), text.size(), start);
  if (n <= 0) return {};
  text.resize(static_cast<size_t>(n));
  if (!text.empty() && text.back() == '\n') text.pop_back();
  // Walk back over `lines` newlines; the tail starts after the last one passed.
  size_t pos = text.size();
  for (int i = 0; i < lines && pos > 0; ++i) {
    auto nl = text.rfind('\n', pos - 1);
    pos = nl == std::string::npos ? 0 : nl;
  }
  if (pos > 0) ++pos;
  return text.substr(pos);
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = ::strsignal(sig);
    return "killed by signal " + std::to_string(sig) + (name ? std::string(" (") + name + ")" : "");
  }
  return "stopped with wait status " + std::to_string(status);
}

int wait_status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

bool verified_alive(const InstanceRecord& record) {
  if (record.process.pid <= 0) return false;
  return judge_liveness(record.process).liveness == Liveness::alive;
}

}  // namespace holdfast::ensure_detail
