// Instance records: JSON (de)serialisation, atomic replacement, and the log tail.
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
    case InstanceState::unknown: return "unknown";
  }
  return "unknown";
}

std::string_view to_string(FailureKind kind) noexcept {
  switch (kind) {
    case FailureKind::none: return "";
    case FailureKind::not_found: return "not_found";
    case FailureKind::cannot_exec: return "cannot_exec";
    case FailureKind::setup: return "setup";
    case FailureKind::exited: return "exited";
    case FailureKind::supervisor: return "supervisor";
  }
  return "";
}

namespace {
FailureKind parse_failure_kind(const std::string& text) {
  for (auto k : {FailureKind::not_found, FailureKind::cannot_exec, FailureKind::setup,
                 FailureKind::exited, FailureKind::supervisor}) {
    if (text == to_string(k)) return k;
  }
  return FailureKind::none;
}
}  // namespace

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
  j["launcher_start_time"] = launcher_start_time;
  j["launcher_lock_fd"] = launcher_lock_fd;
  j["forked"] = forked;
  j["failure"] = failure;
  j["failure_kind"] = std::string(to_string(failure_kind));
  j["exit_status"] = exit_status;
  j["log"] = log_path;
  if (supervision) {
    const auto& v = *supervision;
    j["supervise"] = {{"state", v.state},
                      {"restart", v.restart},
                      {"starts", v.starts},
                      {"restarts", v.restarts},
                      {"last_exit", v.last_exit},
                      {"last_exit_status", v.last_exit_status},
                      {"next_attempt_unix_ns", v.next_attempt_unix_ns},
                      {"decision", v.decision},
                      {"adopted", v.adopted},
                      {"keep", v.keep}};
  }
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
    r.launcher_start_time = j.value("launcher_start_time", uint64_t{0});
    r.launcher_lock_fd = j.value("launcher_lock_fd", -1);
    r.forked = j.value("forked", false);
    r.failure = j.value("failure", "");
    r.failure_kind = parse_failure_kind(j.value("failure_kind", ""));
    r.exit_status = j.value("exit_status", -1);
    r.log_path = j.value("log", "");
    if (j.contains("supervise") && j["supervise"].is_object()) {
      const auto& v = j["supervise"];
      SupervisionRecord sv;
      sv.state = v.value("state", "");
      sv.restart = v.value("restart", "");
      sv.starts = v.value("starts", uint64_t{0});
      sv.restarts = v.value("restarts", uint64_t{0});
      sv.last_exit = v.value("last_exit", "");
      sv.last_exit_status = v.value("last_exit_status", -1);
      sv.next_attempt_unix_ns = v.value("next_attempt_unix_ns", int64_t{0});
      sv.decision = v.value("decision", "");
      sv.adopted = v.value("adopted", false);
      sv.keep = v.value("keep", false);
      r.supervision = sv;
    }
    return r;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

}  // namespace holdfast

namespace holdfast::ensure_detail {

std::optional<InstanceRecord> read_record(const std::string& path) {
  std::optional<std::string> text;
  // ESTALE: on NFS-like filesystems the name was renamed over between lookup and open; the new
  // file is there, so look it up again (bounded: a server that always says ESTALE is an error).
  for (int attempt = 0; attempt < 5; ++attempt) {
    text = sys::read_file(path, 1 << 20);
    if (text || errno != ESTALE) break;
  }
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

}  // namespace holdfast::ensure_detail
