// Internals of holdfast::probe shared by its translation units.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>

#include "holdfast/probe.hpp"

namespace holdfast::probe_internal {

// Name of a statfs f_type magic ("ext4", "tmpfs", ...; "unknown(0x...)" otherwise).
std::string fs_type_name(uint64_t magic);

// Runs the kernel-lock semantics checks for `primitive` (flock, ofd, posix) on a file created
// in `scratch_dir`, using short-lived child processes (one execs /bin/sh). Never throws for lock
// failures; unknown answers stay nullopt, and if the checks could not start, `error` says why and
// `error_number` is the errno.
LockSemantics check_semantics(Primitive primitive, const std::string& scratch_dir, std::string& error,
                              int& error_number);
// Why `primitive` is unsafe for holdfast given its measured semantics, or "" if it is not: it
// must exclude other processes; ofd and flock must also exclude a second open in this process,
// survive closing another descriptor of the file, and stay held by a child across fork and exec
// (what ensure and `holdfast lock` rely on). POSIX locks are process-owned by design: only the
// first rule applies. Unmeasured (nullopt) properties are not held against it.
std::string semantics_problem(Primitive primitive, const LockSemantics& semantics);
// True if errno `err` means the measurement ran out of resources or the filesystem failed
// (ENOSPC, EDQUOT, EMFILE, ENFILE, ENOMEM, EROFS, EIO): the answer is "inconclusive", not unsafe.
bool is_resource_errno(int err) noexcept;

// True if errno `err` means "this filesystem does not do that" rather than a failure.
bool is_unsupported_errno(int err) noexcept;
// True if errno `err` is the normal answer of a loser of `primitive` (EEXIST, EWOULDBLOCK, ...).
bool is_loser_errno(Primitive primitive, int err) noexcept;

// Identifies the mount that holds `path`, for the verdict caches: the boot id, the mount's unique
// 64-bit id (statx STATX_MNT_ID_UNIQUE, never reused within a boot), its device, and the
// filesystem type, source and per-mount and superblock options, from statmount(2) (Linux 6.11+)
// or else from the mount's line in /proc/self/mountinfo. An unmount and mount changes the id; a
// remount changes the options. nullopt when the kernel has no unique mount id (before Linux 6.8)
// or the mount cannot be read: then verdicts are not shared across processes.
std::optional<std::string> mount_key(const std::string& path);

// What was measured about one mount, as kept in the cross-process store (verdict_cache.cpp).
struct StoredVerdicts {
  std::optional<bool> ofd_excludes;    // the quick kernel-lock check (kernel_lock_verdict)
  std::optional<bool> flock_excludes;
  std::string filesystem;
  std::string reason;
  std::map<std::string, std::string> probe;  // holdfast probe: primitive name -> "safe", "unsafe", ...
};

// The stored verdicts for mount `key`, from this user's store or root's; nullopt if none is
// stored or none can be trusted (owned by this euid or root, writable by nobody else).
std::optional<StoredVerdicts> load_verdicts(const std::string& key);
// Merges `update` into this user's stored verdicts for `key` (fields set in `update` win). Best
// effort: silently does nothing where the store cannot be created or trusted.
void store_verdicts(const std::string& key, const StoredVerdicts& update);
// Records report's conclusive per-primitive verdicts for the mount holding report.directory.
void remember_probe_report(const ProbeReport& report);
// probe --ensure (ensure_race.cpp): counts the starts recorded in the `starts` file, plus live
// processes carrying its marker that still run the wrapper, plus `spawned` (unreaped children of
// our workers), and kills every live process carrying the marker, and `spawned`, through pidfds
// verified after pinning. A recorded pid whose process is gone, or now someone else's, is
// counted and never signalled. Returns the number of starts.
int count_and_kill_starts(const std::string& starts, const std::set<pid_t>& spawned);
// Where this process stores verdicts (see verdict_cache.cpp).
std::string verdict_store_dir();
// kernel_lock_verdict(directory, lock_file) and holdfast probe's stored verdicts for the same
// mount (primitive name -> "safe", "unsafe", ...), from one lookup: what Backend::automatic
// decides from, without asking the cache (or the store) twice.
struct MountVerdicts {
  KernelLockVerdict lock;
  std::map<std::string, std::string> probe;
};
MountVerdicts mount_verdicts(const std::string& directory, const std::string& lock_file);
// True if `probe` (MountVerdicts::probe) holds an "unsafe" verdict for `primitive`.
bool measured_unsafe(const std::map<std::string, std::string>& probe, Primitive primitive);
// Forgets kernel_lock_verdict's in-process cache, as a fresh process would start (tests).
void forget_process_verdicts();

}  // namespace holdfast::probe_internal
