// sys/process: thin wrappers for spawning and signalling processes safely (pidfds, PATH lookup,
// descriptor hygiene before exec, /proc scans for lock holders), used by ensure/status/stop.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace holdfast::sys {

// This process's pid without a system call after the first (getpid(2) is one on glibc >= 2.25):
// cached, and refreshed in the child of every fork(2) by a pthread_atfork handler. A child made
// by a raw clone(2) (not fork, vfork+exec or posix_spawn) that calls into holdfast is not
// supported: it would see its parent's pid.
pid_t current_pid() noexcept;

// A 64-bit value unique within this process and unpredictable from outside it, without a system
// call: a key drawn from getrandom(2) once per process (again in a forked child) mixed with a
// counter by a bijection, so two calls in one process never return the same value. For names of
// temp files and record nonces, not for secrets.
uint64_t unique_u64() noexcept;

// pidfd_open(2) (always O_CLOEXEC). Returns the fd or -errno.
int pidfd_open_nothrow(pid_t pid) noexcept;
// pidfd_send_signal(2). Returns 0 or -errno.
int pidfd_signal_nothrow(int pidfd, int sig) noexcept;

// Resolves argv[0] as execvp would: a name with '/' is used as is; otherwise each $PATH entry
// (default "/usr/local/bin:/usr/bin:/bin") is tried. Returns the path of an executable regular
// file; otherwise nullopt with `err` = ENOENT (nothing found) or EACCES (found, not executable).
std::optional<std::string> find_executable(const std::string& name, int& err);

// Closes every descriptor >= 3 except those in `keep`. Uses close_range(2); async-signal-safe.
void close_fds_except(const std::vector<int>& keep) noexcept;

// Resets every signal disposition a program may change to default and unblocks all signals (for
// a child before exec: ignored signals and the mask survive exec). glibc refuses its own two
// (32 and 33), which every glibc program sets up for itself; so they keep what they had.
void reset_signals() noexcept;

// CLOCK_BOOTTIME and CLOCK_REALTIME in nanoseconds. BOOTTIME is comparable across processes.
int64_t boottime_ns() noexcept;
int64_t realtime_ns() noexcept;

// True if process `pid` holds a kernel lock (OFD, flock or POSIX) through a descriptor open on the
// inode `st` names, per /proc/PID/fd and /proc/PID/fdinfo. False if not, or unreadable.
bool process_holds_lock_on(pid_t pid, const struct stat& st);

// As process_holds_lock_on, telling "cannot inspect" apart: 1 holds, 0 does not, -errno when
// /proc/PID/fd cannot be read (-EACCES: another user's or a non-dumpable process; -ENOENT: gone).
int process_lock_state(pid_t pid, const struct stat& st);

// Whether descriptor `fd` of process `pid` is open on the inode `st` names and holds a lock on it
// (/proc/PID/fd/FD and /proc/PID/fdinfo/FD). 1, 0, or -errno as process_lock_state.
int fd_lock_state(pid_t pid, int fd, const struct stat& st);

// Every process (other than `except`) that holds a kernel lock on the inode `st` names, found by
// scanning /proc (as lslocks does). Processes this user cannot inspect are skipped.
std::vector<pid_t> processes_locking(const struct stat& st, pid_t except = 0);

// Asks the scheduler for a time slice of `slice_ns` for the calling thread (sched_setattr with
// SCHED_OTHER and sched_runtime: EEVDF's custom slice, Linux 6.12+, unprivileged). A short slice
// gives a thread that sleeps and then runs briefly an earlier deadline when it wakes. 0 or -errno
// (-EINVAL on kernels without custom slices). The nice value is kept. Children forked afterwards
// start with the default slice (SCHED_RESET_ON_FORK); since that flag would also reset a negative
// nice value in children, a thread with one is left unchanged (-EPERM).
int set_time_slice(uint64_t slice_ns) noexcept;

}  // namespace holdfast::sys
