// Internals of the device capability shared between its files.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/device.hpp"

namespace holdfast::device::detail {

using Clock = std::chrono::steady_clock;

// "minicom, pid 1234" for a live process (its /proc/PID/comm), "pid 1234" when unreadable.
std::string describe_process(pid_t pid);

// Processes (other than us) that have the character device `rdev` open, found via /proc/*/fd.
std::vector<pid_t> processes_with_device_open(dev_t rdev);

// The UUCP lock file path for the tty at `real_path` in `dir`: DIR/LCK..BASENAME.
std::string uucp_lock_path(const std::string& dir, const std::string& real_path);
// The lock directory options/environment select, or "" when there is none.
std::string uucp_lock_dir(const PortOptions& options);

// Reads a UUCP lock file: pid in ASCII ("%10d\n", HDB) or 4-byte binary (old UUCP). 0 if corrupt.
pid_t parse_uucp_pid(std::string_view content);

// Who holds the UUCP lock file at `path`: "" when absent or proven stale (its pid is dead, or was
// reused: the live process started after the lock was written), else a description.
// `stale` is set when the file exists and is provably stale.
std::string uucp_holder(const std::string& path, bool* stale = nullptr);

// The host-side computations deploy compares the board's answers with.
uint32_t crc32(std::string_view data, uint32_t crc = 0) noexcept;
std::string to_hex(std::string_view bytes);
std::string sha256_hex(std::string_view data);

// Python string literal for `s` that MicroPython and CPython both parse (board paths).
std::string py_str(std::string_view s);

// The Ctrl-D guard's push: syncfs(2) on the drive writes every dirty page of it and its metadata
// through the device. Best effort (an unopenable drive is simply not pushed): the guard decides
// by re-checking pending_for_board, never by this call's success.
void push_drive(const std::string& drive) noexcept;

}  // namespace holdfast::device::detail
