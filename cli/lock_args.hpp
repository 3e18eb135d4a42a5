// `holdfast lock` argument parsing, exactly as util-linux flock(1) (2.38 and later) parses its own,
// plus holdfast's extra long options.
//
//   lock [options] FILE|DIR COMMAND [ARGS...]
//   lock [options] FILE|DIR -c COMMAND
//   lock [options] NUMBER                        lock (or with -u unlock) an inherited descriptor
//   lock [options] --fd NUMBER COMMAND [ARGS...] / --fd NUMBER -c COMMAND   (util-linux 2.42)
//
// As getopt_long(3) with "+": parsing stops at the first non-option, so everything after FILE is
// the command's (`lock L cmd -s` passes -s to cmd). A long option may be abbreviated to any
// unambiguous prefix *of flock(1)'s option names*; holdfast's own long options (--backend,
// --stale-after, --json, --allow-unsafe) are matched exactly, or by prefix only when the prefix
// names no flock(1) option, so every abbreviation that works with flock(1) means the same here.
// Repeated or contradicting flags: the last one wins (`-s -x` is exclusive), as with flock(1).
// The one extension: a `--` directly after FILE is skipped (`lock L -- cmd`), where flock(1)
// would try to run a program named "--" (and fail with 69).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "lock_etcd.hpp"

namespace holdfast::cli {

// A usage error, exit 64. Printed as flock(1) prints each kind (see print_usage_error).
class LockUsageError : public std::runtime_error {
 public:
  enum class Style {
    getopt,    // getopt_long's own message: "ARGV0: MESSAGE" then the "Try ... --help" line
    try_help,  // flock(1)'s warnx + errtryhelp: "PROG: MESSAGE" then the "Try" line
    errx,      // flock(1)'s errx: "PROG: MESSAGE" only
  };
  LockUsageError(Style style, const std::string& message) : std::runtime_error(message), style_(style) {}
  Style style() const noexcept { return style_; }

 private:
  Style style_;
};

// Prints `e` to stderr as flock(1) would: `argv0` is how the program was invoked (getopt names
// it so), `prog` the short name ("flock", or "holdfast lock").
void print_usage_error(const LockUsageError& e, const std::string& argv0, const std::string& prog);

// flock(1)'s -w value, kept as flock(1) keeps it: a struct timeval made by truncating the number
// (a C cast; out-of-range and NaN become the most negative time_t, as on x86-64). Zero means
// "do not wait" (-n); a negative part means flock(1) fails to arm its timer (exit 71).
struct FlockTimeout {
  int64_t seconds = 0;
  int64_t microseconds = 0;
  bool is_zero() const noexcept { return seconds == 0 && microseconds == 0; }
  bool is_invalid() const noexcept { return seconds < 0 || microseconds < 0; }
  // The wait as nanoseconds, saturating at nanoseconds::max() ("forever"). Only for valid values.
  std::chrono::nanoseconds duration() const noexcept;
};

// Parses a -w argument as flock(1) does (strtold: blanks, sign, hex, exponents, inf and nan are
// accepted; trailing garbage, an empty string and out-of-range values are usage errors).
FlockTimeout parse_flock_timeout(const std::string& text);

struct LockInvocation {
  enum class Action { run, help, version };
  enum class Operation { exclusive, shared, unlock };

  Action action = Action::run;
  Operation operation = Operation::exclusive;

  // Exactly one of: a path to lock (path non-empty), or a descriptor (fd >= 0).
  std::string path;
  int fd = -1;
  bool fd_option = false;             // --fd NUMBER was given (the command runs around it)
  std::vector<std::string> command;   // empty: lock the descriptor and exit
  bool shell_command = false;         // command is {SHELL, "-c", STRING} from -c/--command

  bool nonblock = false;
  std::optional<FlockTimeout> timeout;  // -w/--wait/--timeout
  int conflict_exit_code = 1;          // -E
  bool close_before_exec = false;      // -o
  bool no_fork = false;                // -F
  bool fcntl = false;                  // --fcntl: OFD locks (the `ofd` backend)
  bool verbose = false;

  // holdfast's own
  bool json = false;
  std::optional<std::string> backend;  // --backend NAME
  std::chrono::nanoseconds stale_after{0};
  bool allow_unsafe = false;
  bool fair = false;                   // --fair (shm backend: FIFO handoff)
  EtcdFlags etcd;                      // --ttl, --cacert, --cert, --key, --user (etcd:// backends)
};

// Parses `args` (args[0] is the program or subcommand name and is skipped). Throws
// LockUsageError on anything flock(1) rejects with exit 64, and holdfast::Error (usage) for a bad
// --stale-after.
LockInvocation parse_lock_args(const std::vector<std::string>& args);

// The shell for -c: $SHELL if set and non-empty, else /bin/sh (as flock(1) 2.38).
std::string shell_for_command();

}  // namespace holdfast::cli
