// sys/file: thin, EINTR-safe wrappers over file syscalls. They throw holdfast::Error naming the
// path; callers that must branch on errno use the *_nothrow forms, which return -errno.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "sys/fd.hpp"

namespace holdfast::sys {

// The base open flags for every descriptor holdfast opens (see UniqueFd for why).
inline constexpr int kBaseOpenFlags = O_CLOEXEC;

// open(2) relative to `dirfd` (AT_FDCWD for cwd) with kBaseOpenFlags added; retries EINTR.
// Returns the fd or -errno.
int open_nothrow(int dirfd, const std::string& path, int flags, mode_t mode = 0) noexcept;
// As open_nothrow, throwing Error(path, context) on failure.
UniqueFd open_or_throw(int dirfd, const std::string& path, int flags, mode_t mode,
                       std::string_view context);

// Writes all of `data` at the current offset (or at `offset` for pwrite_all); retries short writes
// and EINTR. Returns 0 or -errno.
int write_all(int fd, std::string_view data) noexcept;
int pwrite_all(int fd, std::string_view data, off_t offset) noexcept;
// Reads up to `limit` bytes from offset 0 (pread), or to EOF. Returns nullopt and sets errno on error.
std::optional<std::string> pread_all(int fd, size_t limit = SIZE_MAX) noexcept;
// Reads a whole small file by path (e.g. /proc/PID/stat). nullopt + errno on failure.
std::optional<std::string> read_file(const std::string& path, size_t limit = 1 << 20) noexcept;
// Reads a whole /proc file that the kernel generates in one piece (a single-record seq_file:
// /proc/PID/stat, /proc/PID/fdinfo/FD). The kernel builds all of it before the first read and
// each read fills the buffer from it, so a read shorter than asked is the end: this saves
// read_file's final read that returns 0. Not for multi-record seq_files (/proc/PID/mountinfo,
// /proc/locks: a read may stop short where the next record does not fit) nor for anything off
// procfs (a pipe, a terminal, a FUSE file).
std::optional<std::string> read_proc_file(const std::string& path, size_t limit = 1 << 16) noexcept;

// fstat/stat/lstat returning -errno instead of throwing.
int fstat_nothrow(int fd, struct stat& st) noexcept;
int stat_nothrow(const std::string& path, struct stat& st) noexcept;
int lstat_nothrow(const std::string& path, struct stat& st) noexcept;

// The modification time of `st` in nanoseconds since the epoch.
inline int64_t mtime_ns(const struct stat& st) noexcept {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

// True if both stats name the same inode.
inline bool same_inode(const struct stat& a, const struct stat& b) noexcept {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// fsync with EINTR retry. Returns 0 or -errno. An fsync error must be treated as fatal: after a
// failed fsync the kernel may have dropped the dirty pages, so a retry can "succeed" without data.
int fsync_nothrow(int fd) noexcept;

// The directory part of `path` ("." if none) and the final component.
std::string dirname_of(const std::string& path);
std::string basename_of(const std::string& path);

// A random 64-bit value from getrandom(2), for unique temp names and nonces.
uint64_t random_u64() noexcept;

}  // namespace holdfast::sys
