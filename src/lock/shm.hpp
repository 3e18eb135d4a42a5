// The shm backend (shm_backend.cpp): a robust process-shared lock in a mapping in the state
// directory. Not installed.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/lock.hpp"
#include "lock/internal.hpp"

namespace holdfast::lock_internal {

// Takes the shm lock on `target` as `wait` allows (options.mode, options.fair); null if the wait
// ended first. The mapping is opened (and validated, or initialised) once per `files`. Throws
// holdfast::Error: no usable state directory, a corrupt mapping, a mapping in use from another
// pid namespace, a thread that already holds the lock and would wait on itself.
std::unique_ptr<Lock::State> shm_acquire(const Target& target, const LockOptions& options, const WaitSpec& wait,
                                         const std::shared_ptr<OpenFiles>& files);

// What an shm lock's mapping says, read without taking the lock.
struct ShmHolders {
  std::string mapping;          // its file in the state directory
  bool this_boot = false;       // initialised in this boot (otherwise nothing in it is held)
  bool exclusive_held = false;  // the gate's futex word names a live owner
  std::vector<pid_t> shared_pids;   // shared holders whose slot's futex word names a live owner
  std::optional<HolderRecord> record;  // the last exclusive holder's record
};
// nullopt when the lock file open at `lock_fd` has no (readable, complete) shm mapping.
std::optional<ShmHolders> inspect_shm(int lock_fd, const struct stat& st);

// Fills `info` from the shm mapping and returns true when that is the lock in use (held, or
// the only record there is); false leaves `info` alone.
bool describe_shm(int lock_fd, const struct stat& st, HolderInfo& info);

}  // namespace holdfast::lock_internal
