// Internals of holdfast::probe shared by its translation units.
#pragma once

#include <cstdint>
#include <string>

#include "holdfast/probe.hpp"

namespace holdfast::probe_internal {

// Name of a statfs f_type magic ("ext4", "tmpfs", ...; "unknown(0x...)" otherwise).
std::string fs_type_name(uint64_t magic);

// Runs the kernel-lock semantics checks for `primitive` (flock, ofd, posix) on a file created
// in `scratch_dir`, using short-lived child processes. Never throws for lock failures; unknown
// answers stay nullopt and `error` says why.
LockSemantics check_semantics(Primitive primitive, const std::string& scratch_dir, std::string& error);

// True if errno `err` means "this filesystem does not do that" rather than a failure.
bool is_unsupported_errno(int err) noexcept;
// True if errno `err` is the normal answer of a loser of `primitive` (EEXIST, EWOULDBLOCK, ...).
bool is_loser_errno(Primitive primitive, int err) noexcept;

}  // namespace holdfast::probe_internal
