// holdfast errors and exit codes.
//
// Every failure that reaches a user is one line naming the path and the cause, and maps to one of
// the documented exit codes below (sysexits(3) values, as mature Unix tools use them), so scripts
// can tell "someone else holds it" from "you pointed me at a read-only filesystem".
#pragma once

#include <stdexcept>
#include <string>

namespace holdfast {

// Exit codes of the `holdfast` command. Documented in docs/EXIT_CODES.md and in each --help.
namespace exit_code {
inline constexpr int ok = 0;
inline constexpr int conflict = 1;      // lock held / timed out (lock -E overrides), wait timed out
inline constexpr int usage = 64;        // bad flags or arguments (EX_USAGE)
inline constexpr int data = 65;         // corrupt or unreadable record (EX_DATAERR)
inline constexpr int no_input = 66;     // missing file or directory (EX_NOINPUT)
inline constexpr int unavailable = 69;  // primitive unsupported or unsafe here (EX_UNAVAILABLE)
inline constexpr int software = 70;     // internal error (EX_SOFTWARE)
inline constexpr int os_error = 71;     // any other system error (EX_OSERR)
inline constexpr int cant_create = 73;  // EROFS, EISDIR, EEXIST: cannot create or replace (EX_CANTCREAT)
inline constexpr int io_error = 74;     // EIO, ENOSPC, EDQUOT, failed fsync (EX_IOERR)
inline constexpr int temp_fail = 75;    // timed out waiting for readiness / a condition (EX_TEMPFAIL)
inline constexpr int no_perm = 77;      // EACCES, EPERM, refused symlink (EX_NOPERM)
inline constexpr int fenced = 79;       // write --fence: a newer token already wrote this path
inline constexpr int protocol = 76;     // etcd: TLS failure or an answer that cannot be read (EX_PROTOCOL)
inline constexpr int lock_lost = 90;    // etcd: the lease could not be renewed in time; the command was stopped
inline constexpr int cannot_exec = 126; // command found but not executable
inline constexpr int not_found = 127;   // command not found

// The exit code for a failure with errno value `err`.
int for_errno(int err) noexcept;
}  // namespace exit_code

// A failure of an operation on a path. what() is one line: "PATH: CONTEXT: CAUSE".
class Error : public std::runtime_error {
 public:
  // An error from a system call; the cause is strerror(err).
  Error(int err, std::string path, const std::string& context);
  // An error without an errno (corrupt data, unsupported primitive); `exit` is an exit_code value.
  Error(std::string path, const std::string& context, const std::string& cause, int exit);

  int error_number() const noexcept { return errno_; }  // 0 if not from a system call
  const std::string& path() const noexcept { return path_; }
  int exit_code() const noexcept { return exit_; }

 private:
  int errno_;
  std::string path_;
  int exit_;
};

}  // namespace holdfast
