// sys/futex: process-shared futex wait/wake on a 32-bit word in MAP_SHARED memory. Used by the
// probe's race harness to release many worker processes at the same instant.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>

namespace holdfast::sys {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) &&
              std::atomic<uint32_t>::is_always_lock_free);

// Blocks while `word` == `expected`, at most `timeout_ns` (negative: no limit). Shared (not
// FUTEX_PRIVATE) because waiters are other processes. Returns 0 on wake, -errno otherwise
// (EAGAIN: the value already differed; ETIMEDOUT; EINTR).
inline int futex_wait(std::atomic<uint32_t>& word, uint32_t expected, int64_t timeout_ns) noexcept {
  timespec ts{};
  timespec* tp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
    tp = &ts;
  }
  long rc = ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, expected, tp,
                      nullptr, 0);
  return rc == 0 ? 0 : -errno;
}

// Wakes every process waiting on `word`.
inline void futex_wake_all(std::atomic<uint32_t>& word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace holdfast::sys
