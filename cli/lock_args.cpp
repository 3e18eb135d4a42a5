#include "lock_args.hpp"

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>

#include "duration.hpp"

namespace holdfast::cli {
namespace {

enum class Opt {
  shared, exclusive, unlock, nonblock, timeout, conflict_exit_code, close, no_fork, verbose, help, version,
  fcntl, fd, start, length,  // util-linux 2.40+ (start/length are recognised, and refused)
  json, backend, stale_after, allow_unsafe, fair,  // holdfast's own
  ttl, cacert, cert, key, user,              // holdfast's own, for etcd:// backends
};

struct LongOption {
  const char* name;
  bool takes_argument;
  Opt opt;
};

// flock(1)'s long options, in its own table order (the order of "possibilities" in messages):
// 2.38's, plus --fcntl and --fd (2.40+), which no 2.38 abbreviation can reach.
constexpr LongOption kFlockOptions[] = {
    {"shared", false, Opt::shared},       {"exclusive", false, Opt::exclusive},
    {"unlock", false, Opt::unlock},       {"nonblocking", false, Opt::nonblock},
    {"nb", false, Opt::nonblock},         {"timeout", true, Opt::timeout},
    {"wait", true, Opt::timeout},         {"conflict-exit-code", true, Opt::conflict_exit_code},
    {"close", false, Opt::close},         {"no-fork", false, Opt::no_fork},
    {"verbose", false, Opt::verbose},     {"fcntl", false, Opt::fcntl},         {"fd", true, Opt::fd},
    {"help", false, Opt::help},           {"version", false, Opt::version},
};

// holdfast's: exact, or by a prefix that names no flock(1) option (see the header). util-linux
// 2.42's byte-range options are here too, so that they are refused rather than unknown; being
// outside flock(1)'s table, they leave 2.38's `--s` meaning --shared.
constexpr LongOption kHoldfastOptions[] = {
    {"start", true, Opt::start},
    {"length", true, Opt::length},
    {"json", false, Opt::json},
    {"backend", true, Opt::backend},
    {"stale-after", true, Opt::stale_after},
    {"allow-unsafe", false, Opt::allow_unsafe},
    {"fair", false, Opt::fair},
    {"ttl", true, Opt::ttl},
    {"cacert", true, Opt::cacert},
    {"cert", true, Opt::cert},
    {"key", true, Opt::key},
    {"user", true, Opt::user},
};

using Style = LockUsageError::Style;

[[noreturn]] void getopt_error(const std::string& message) { throw LockUsageError(Style::getopt, message); }
[[noreturn]] void usage_error(const std::string& message) { throw LockUsageError(Style::errx, message); }

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// getopt_long's matching: an exact name wins; otherwise the options the prefix abbreviates, which
// are ambiguous unless they are all the same option.
const LongOption* match_in(std::string_view name, const LongOption* begin, const LongOption* end,
                           const std::string& spelled) {
  std::vector<const LongOption*> candidates;
  for (const LongOption* o = begin; o != end; ++o) {
    if (name == o->name) return o;
    if (starts_with(o->name, name)) candidates.push_back(o);
  }
  if (candidates.empty()) return nullptr;
  // Like glibc: the first candidate, and every one that is a different option from it.
  std::vector<const LongOption*> distinct{candidates.front()};
  for (const LongOption* c : candidates) {
    if (c->opt != candidates.front()->opt || c->takes_argument != candidates.front()->takes_argument) {
      distinct.push_back(c);
    }
  }
  if (distinct.size() > 1) {
    std::string message = "option '" + spelled + "' is ambiguous; possibilities:";
    for (const LongOption* p : distinct) message += fmt::format(" '--{}'", p->name);
    getopt_error(message);
  }
  return candidates.front();
}

const LongOption& resolve_long(std::string_view name, const std::string& spelled) {
  for (const LongOption& o : kHoldfastOptions) {
    if (name == o.name) return o;
  }
  if (const LongOption* o = match_in(name, std::begin(kFlockOptions), std::end(kFlockOptions), spelled)) return *o;
  if (const LongOption* o = match_in(name, std::begin(kHoldfastOptions), std::end(kHoldfastOptions), spelled)) {
    return *o;
  }
  getopt_error("unrecognized option '" + spelled + "'");
}

// flock(1)'s strtos32_or_err: strtol base 10, blanks and a sign allowed, nothing after.
int parse_s32(const std::string& text, const char* what) {
  if (text.empty()) usage_error(fmt::format("{}: '{}'", what, text));
  errno = 0;
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0') usage_error(fmt::format("{}: '{}'", what, text));
  if (errno == ERANGE || value < INT_MIN || value > INT_MAX) {
    usage_error(fmt::format("{}: '{}': {}", what, text, std::strerror(ERANGE)));
  }
  return static_cast<int>(value);
}

void apply(LockInvocation& inv, Opt opt, const std::string& value, const std::string& spelled) {
  switch (opt) {
    case Opt::shared: inv.operation = LockInvocation::Operation::shared; break;
    case Opt::exclusive: inv.operation = LockInvocation::Operation::exclusive; break;
    case Opt::unlock: inv.operation = LockInvocation::Operation::unlock; break;
    case Opt::nonblock: inv.nonblock = true; break;
    case Opt::timeout: inv.timeout = parse_flock_timeout(value); break;
    case Opt::conflict_exit_code: {
      int code = parse_s32(value, "invalid exit code");
      if (code < 0 || code > 255) usage_error("exit code out of range (expected 0 to 255)");
      inv.conflict_exit_code = code;
      break;
    }
    case Opt::close: inv.close_before_exec = true; break;
    case Opt::no_fork: inv.no_fork = true; break;
    case Opt::verbose: inv.verbose = true; break;
    case Opt::help: inv.action = LockInvocation::Action::help; break;
    case Opt::version: inv.action = LockInvocation::Action::version; break;
    case Opt::fcntl: inv.fcntl = true; break;
    case Opt::fd: {
      int fd = parse_s32(value, "invalid file descriptor");
      if (fd < 0) usage_error(fmt::format("invalid file descriptor: '{}'", value));
      inv.fd = fd;
      inv.fd_option = true;
      break;
    }
    case Opt::start:
    case Opt::length: usage_error(spelled + ": byte-range locks are not supported (holdfast locks whole files)");
    case Opt::json: inv.json = true; break;
    case Opt::backend: inv.backend = value; break;
    case Opt::stale_after: inv.stale_after = parse_duration(value, "--stale-after"); break;
    case Opt::allow_unsafe: inv.allow_unsafe = true; break;
    case Opt::fair: inv.fair = true; break;
    case Opt::ttl: inv.etcd.ttl = parse_duration(value, "--ttl"); break;
    case Opt::cacert: inv.etcd.cacert = value; break;
    case Opt::cert: inv.etcd.cert = value; break;
    case Opt::key: inv.etcd.key = value; break;
    case Opt::user: inv.etcd.user = value; break;
  }
}

Opt short_option(char c, bool& takes_argument) {
  takes_argument = false;
  switch (c) {
    case 's': return Opt::shared;
    case 'e':
    case 'x': return Opt::exclusive;
    case 'u': return Opt::unlock;
    case 'n': return Opt::nonblock;
    case 'o': return Opt::close;
    case 'F': return Opt::no_fork;
    case 'h': return Opt::help;
    case 'V': return Opt::version;
    case 'w': takes_argument = true; return Opt::timeout;
    case 'E': takes_argument = true; return Opt::conflict_exit_code;
    case '?': throw LockUsageError(Style::try_help, "");  // in flock(1)'s optstring, then refused
    default: getopt_error(fmt::format("invalid option -- '{}'", c));
  }
}

bool is_command_option(std::string_view arg) { return arg == "-c" || arg == "--command"; }

}  // namespace

void print_usage_error(const LockUsageError& e, const std::string& argv0, const std::string& prog) {
  std::string text;
  if (*e.what() != '\0') text = fmt::format("{}: {}\n", e.style() == Style::getopt ? argv0 : prog, e.what());
  if (e.style() != Style::errx) text += fmt::format("Try '{} --help' for more information.\n", prog);
  std::fputs(text.c_str(), stderr);
}

std::chrono::nanoseconds FlockTimeout::duration() const noexcept {
  using std::chrono::nanoseconds;
  constexpr int64_t kMaxSeconds = INT64_MAX / 1'000'000'000 - 1;
  if (seconds >= kMaxSeconds) return nanoseconds::max();
  return nanoseconds(seconds * 1'000'000'000 + microseconds * 1'000);
}

FlockTimeout parse_flock_timeout(const std::string& text) {
  // util-linux strtold_or_err, whose result is then stored in a double.
  errno = 0;
  char* end = nullptr;
  if (text.empty()) usage_error("invalid timeout value: ''");
  long double parsed = std::strtold(text.c_str(), &end);
  if (errno == ERANGE) usage_error(fmt::format("invalid timeout value: '{}': {}", text, std::strerror(ERANGE)));
  if (errno != 0 || end == text.c_str() || *end != '\0') usage_error(fmt::format("invalid timeout value: '{}'", text));
  const auto value = static_cast<double>(parsed);
  // flock(1) does `tv_sec = (time_t) value`: undefined in C for NaN and out-of-range values, and
  // on x86-64 (cvttsd2si) the most negative time_t, which the timer then refuses (exit 71).
  FlockTimeout t;
  if (!(value >= -9223372036854775808.0 && value < 9223372036854775808.0)) {
    t.seconds = INT64_MIN;
    return t;
  }
  t.seconds = static_cast<int64_t>(value);
  t.microseconds = static_cast<int64_t>((value - static_cast<double>(t.seconds)) * 1000000);
  return t;
}

std::string shell_for_command() {
  const char* shell = std::getenv("SHELL");
  return shell != nullptr && *shell != '\0' ? shell : "/bin/sh";
}

LockInvocation parse_lock_args(const std::vector<std::string>& args) {
  LockInvocation inv;
  if (args.size() < 2) throw LockUsageError(Style::try_help, "not enough arguments");
  size_t i = 1;
  bool command_option = false;  // -c/--command among the options (only meaningful with --fd)
  while (i < args.size()) {
    const std::string& arg = args[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') break;  // "+": the first non-option ends the options
    if (is_command_option(arg)) {
      // flock(1) (2.42) takes the option's argument as the command: it must be the last one.
      command_option = true;
      ++i;
      break;
    }
    ++i;
    if (arg[1] == '-') {
      const std::string body = arg.substr(2);
      const auto eq = body.find('=');
      const std::string name = body.substr(0, eq);
      const LongOption& o = resolve_long(name, "--" + name);
      std::string value;
      if (o.takes_argument) {
        if (eq != std::string::npos) {
          value = body.substr(eq + 1);
        } else if (i < args.size()) {
          value = args[i++];
        } else {
          getopt_error(fmt::format("option '--{}' requires an argument", o.name));
        }
      } else if (eq != std::string::npos) {
        getopt_error(fmt::format("option '--{}' doesn't allow an argument", o.name));
      }
      apply(inv, o.opt, value, "--" + std::string(o.name));
      continue;
    }
    for (size_t k = 1; k < arg.size(); ++k) {
      bool takes_argument = false;
      Opt opt = short_option(arg[k], takes_argument);
      if (!takes_argument) {
        apply(inv, opt, "", std::string("-") + arg[k]);
        continue;
      }
      std::string value;
      if (k + 1 < arg.size()) {
        value = arg.substr(k + 1);
      } else if (i < args.size()) {
        value = args[i++];
      } else {
        getopt_error(fmt::format("option requires an argument -- '{}'", arg[k]));
      }
      apply(inv, opt, value, std::string("-") + arg[k]);
      break;
    }
  }
  if (inv.action != LockInvocation::Action::run) return inv;

  if (inv.no_fork && inv.close_before_exec) usage_error("the --no-fork and --close options are incompatible");

  const size_t rest = args.size() - i;
  auto shell_form = [&](const std::string& spelled, size_t expected_rest, const std::string& command) {
    if (rest != expected_rest) usage_error(spelled + " requires exactly one command argument");
    inv.command = {shell_for_command(), "-c", command};
    inv.shell_command = true;
  };
  if (command_option) {
    // Only `--fd N -c COMMAND` (util-linux 2.42) has -c among the options; 2.38 rejects it there.
    if (!inv.fd_option) getopt_error(args[i - 1] == "-c" ? "invalid option -- 'c'" : "unrecognized option '--command'");
    shell_form(args[i - 1], 1, rest == 1 ? args[i] : "");
    return inv;
  }
  if (rest > 1 && !inv.fd_option) {
    inv.path = args[i];
    const std::string& next = args[i + 1];
    if (is_command_option(next)) {
      shell_form(next, 3, rest == 3 ? args[i + 2] : "");
    } else {
      size_t first = i + 1;
      if (next == "--") ++first;  // holdfast's documented `PATH -- COMMAND`
      inv.command.assign(args.begin() + static_cast<std::ptrdiff_t>(first), args.end());
      if (inv.command.empty()) usage_error("missing command after --");
    }
    return inv;
  }
  if (rest > 0) {
    if (inv.fd_option) {
      if (is_command_option(args[i])) {
        shell_form(args[i], 2, rest == 2 ? args[i + 1] : "");
      } else {
        inv.command.assign(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
      }
    } else {
      int fd = parse_s32(args[i], "bad file descriptor");
      if (fd < 0) usage_error(fmt::format("bad file descriptor: '{}'", args[i]));
      inv.fd = fd;
    }
    return inv;
  }
  if (inv.fd_option) usage_error("missing command");
  usage_error("requires file descriptor, file or directory");
}

}  // namespace holdfast::cli
