// Backend resolution for Lock and LockFile (select_backend.cpp).
#pragma once

#include "holdfast/lock.hpp"
#include "lock/internal.hpp"

namespace holdfast::lock_internal {

// The backend a lock on `target` uses: select_backend for Backend::automatic; otherwise the
// requested backend, after refuse_known_unsafe unless options.allow_unsafe_backend.
Backend choose_backend(const Target& target, const LockOptions& options);

// Throws Error(exit_code::unavailable), one line naming the measurement, if `backend` is known to
// be broken on target's filesystem: ofd/flock not enforced (kernel_lock_verdict), or the
// backend's primitive measured unsafe by `holdfast probe` on that mount. Unmeasured means allowed.
void refuse_known_unsafe(const Target& target, Backend backend);

}  // namespace holdfast::lock_internal
