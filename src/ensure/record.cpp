// Instance records: JSON (de)serialisation, atomic replacement, and the log tail.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <utility>
#include <variant>

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

namespace {

// Builds an InstanceRecord straight from nlohmann's SAX events, without the DOM: every client
// that wakes at readiness parses the record once, and building (then reading back) a tree of ~35
// nodes with their key strings was most of that (callgrind). Same contract as reading it through
// the DOM with at()/value(): the required fields must be present, a field of the wrong type
// makes the record invalid, unknown fields (and whatever they contain) are ignored, and of a key
// given twice the last one counts. Numbers must be integers that fit their field.
class RecordReader final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit RecordReader(InstanceRecord& record) : r_(record) {}

  // After a successful sax_parse: all required fields were seen (state and failure_kind are
  // left in state_text / failure_kind_text for the caller to convert).
  bool complete() const { return (seen_ & kRequired) == kRequired; }
  std::string state_text;
  std::string failure_kind_text;

  bool null() override { return scalar(nullptr); }
  bool boolean(bool v) override { return scalar(v); }
  bool number_integer(number_integer_t v) override { return scalar(v); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(v); }
  bool number_float(number_float_t v, const string_t& /*text*/) override { return scalar(v); }
  bool string(string_t& v) override { return scalar(std::move(v)); }
  bool binary(binary_t& /*v*/) override { return false; }  // never produced by the text parser

  bool start_object(std::size_t /*size*/) override {
    if (skipping()) return ++depth_, true;
    if (depth_ == 0) return depth_ = 1, true;
    const Pending pending = std::exchange(pending_, Pending::none);
    if (pending == Pending::supervise && depth_ == 1) {
      r_.supervision.emplace();
      in_supervise_ = true;
      return ++depth_, true;
    }
    if (pending != Pending::none || !std::holds_alternative<std::monostate>(target_)) return false;
    skip_from_ = ++depth_;  // an unknown field's object: ignored, with all it contains
    return true;
  }
  bool end_object() override { return leave(); }
  bool start_array(std::size_t /*size*/) override {
    if (skipping()) return ++depth_, true;
    if (depth_ == 0) return false;  // a record is an object
    const Pending pending = std::exchange(pending_, Pending::none);
    if (pending == Pending::command) {
      r_.command.clear();
      in_command_ = true;
      return ++depth_, true;
    }
    if (in_command_ || !std::holds_alternative<std::monostate>(target_)) return false;
    skip_from_ = ++depth_;
    return true;
  }
  bool end_array() override { return leave(); }

  bool key(string_t& k) override {
    if (skipping()) return true;
    target_ = std::monostate{};
    pending_ = Pending::none;
    if (depth_ == 1) top_level_key(k);
    if (depth_ == 2 && in_supervise_) supervise_key(k);
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*ex*/) override {
    return false;
  }

 private:
  using Target = std::variant<std::monostate, std::string*, uint64_t*, int64_t*, int*, bool*>;
  enum class Pending { none, command, supervise };
  // name, pid, start_time, boot_id, host, command, state, ready_mode, attempt
  static constexpr unsigned kRequired = (1U << 9) - 1;

  bool skipping() const { return skip_from_ != 0; }

  bool leave() {
    if (skip_from_ == depth_) skip_from_ = 0;
    if (!skipping() && depth_ == 2) in_supervise_ = in_command_ = false;
    --depth_;
    return true;
  }

  void top_level_key(const std::string& k) {
    auto field = [&](Target t, int required_bit = -1) {
      target_ = t;
      if (required_bit >= 0) seen_ |= 1U << required_bit;
    };
    auto& p = r_.process;
    if (k == "name") field(&r_.name, 0);
    else if (k == "pid") field(&p.pid, 1);
    else if (k == "start_time") field(&p.start_time, 2);
    else if (k == "boot_id") field(&p.boot_id, 3);
    else if (k == "host") field(&p.host, 4);
    else if (k == "command") pending_ = Pending::command, seen_ |= 1U << 5;
    else if (k == "state") field(&state_text, 6);
    else if (k == "ready_mode") field(&r_.ready_mode, 7);
    else if (k == "attempt") field(&r_.attempt, 8);
    else if (k == "status") field(&r_.status);
    else if (k == "spawned_unix_ns") field(&r_.spawned_unix_ns);
    else if (k == "ready_unix_ns") field(&r_.ready_unix_ns);
    else if (k == "attempt_started_boot_ns") field(&r_.attempt_started_boot_ns);
    else if (k == "attempt_ended_boot_ns") field(&r_.attempt_ended_boot_ns);
    else if (k == "launcher_pid") field(&r_.launcher_pid);
    else if (k == "launcher_start_time") field(&r_.launcher_start_time);
    else if (k == "launcher_lock_fd") field(&r_.launcher_lock_fd);
    else if (k == "forked") field(&r_.forked);
    else if (k == "failure") field(&r_.failure);
    else if (k == "failure_kind") field(&failure_kind_text);
    else if (k == "exit_status") field(&r_.exit_status);
    else if (k == "log") field(&r_.log_path);
    else if (k == "supervise") pending_ = Pending::supervise;  // used only if it is an object
  }

  void supervise_key(const std::string& k) {
    auto& v = *r_.supervision;
    if (k == "state") target_ = &v.state;
    else if (k == "restart") target_ = &v.restart;
    else if (k == "starts") target_ = &v.starts;
    else if (k == "restarts") target_ = &v.restarts;
    else if (k == "last_exit") target_ = &v.last_exit;
    else if (k == "last_exit_status") target_ = &v.last_exit_status;
    else if (k == "next_attempt_unix_ns") target_ = &v.next_attempt_unix_ns;
    else if (k == "decision") target_ = &v.decision;
    else if (k == "adopted") target_ = &v.adopted;
    else if (k == "keep") target_ = &v.keep;
  }

  template <typename Value>
  bool scalar(Value v) {
    if (skipping()) return true;
    if (in_command_) {
      if constexpr (std::is_same_v<Value, std::string>) {
        r_.command.push_back(std::move(v));
        return true;
      } else {
        return false;  // command is an array of strings
      }
    }
    if (depth_ == 0) return false;  // a record is an object
    const Pending pending = std::exchange(pending_, Pending::none);
    if (pending == Pending::command) return false;  // not an array
    return std::visit(
        [&](auto field) {
          if constexpr (std::is_same_v<decltype(field), std::monostate>) {
            return true;  // an unknown field (or a "supervise" that is no object): ignored
          } else {
            return assign(field, std::move(v));
          }
        },
        std::exchange(target_, std::monostate{}));
  }

  template <typename Field, typename Value>
  static bool assign(Field* field, Value v) {
    if constexpr (std::is_same_v<Field, std::string> || std::is_same_v<Field, bool>) {
      if constexpr (std::is_same_v<Field, Value>) {
        *field = std::move(v);
        return true;
      }
      return false;
    } else if constexpr (std::is_integral_v<Value> && !std::is_same_v<Value, bool>) {
      if (!std::in_range<Field>(v)) return false;
      *field = static_cast<Field>(v);
      return true;
    } else {
      return false;
    }
  }

  InstanceRecord& r_;
  Target target_;
  Pending pending_ = Pending::none;
  unsigned seen_ = 0;
  int depth_ = 0;
  int skip_from_ = 0;  // non-zero: inside an ignored container opened at this depth
  bool in_command_ = false;
  bool in_supervise_ = false;
};

}  // namespace

std::optional<InstanceRecord> InstanceRecord::parse(std::string_view text) {
  InstanceRecord r;
  RecordReader reader(r);
  try {
    if (!nlohmann::json::sax_parse(text, &reader) || !reader.complete()) return std::nullopt;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
  const auto& state = reader.state_text;
  if (state == "starting") r.state = RecordState::starting;
  else if (state == "ready") r.state = RecordState::ready;
  else if (state == "failed") r.state = RecordState::failed;
  else if (state == "stopped") r.state = RecordState::stopped;
  else return std::nullopt;
  r.failure_kind = parse_failure_kind(reader.failure_kind_text);
  return r;
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
