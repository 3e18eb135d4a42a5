#include "sys/robust_mutex.hpp"

#include <linux/futex.h>

#include <atomic>
#include <cerrno>

namespace holdfast::sys {

int robust_mutex_init(pthread_mutex_t* m, RobustKind kind) noexcept {
  pthread_mutexattr_t attr;
  if (int rc = ::pthread_mutexattr_init(&attr); rc != 0) return rc;
  // Error-checking: a thread that locks twice gets EDEADLK instead of waiting on itself forever,
  // and only the owner may unlock.
  int rc = ::pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
  if (rc == 0) rc = ::pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (rc == 0) rc = ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (rc == 0 && kind == RobustKind::fifo) rc = ::pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
  if (rc == 0) rc = ::pthread_mutex_init(m, &attr);
  ::pthread_mutexattr_destroy(&attr);
  return rc;
}

MutexLock robust_mutex_lock(pthread_mutex_t* m, bool try_only, const timespec* deadline) noexcept {
  int rc = 0;
  if (try_only) {
    rc = ::pthread_mutex_trylock(m);
  } else if (deadline != nullptr) {
    rc = ::pthread_mutex_timedlock(m, deadline);
  } else {
    rc = ::pthread_mutex_lock(m);
  }
  switch (rc) {
    case 0: return {MutexResult::acquired, 0};
    case EOWNERDEAD:
      // Consistent at once: unlocking without this would make the mutex unusable forever.
      if (int c = ::pthread_mutex_consistent(m); c != 0) return {MutexResult::error, c};
      return {MutexResult::acquired_owner_died, 0};
    case EBUSY: return {MutexResult::busy, rc};
    case ETIMEDOUT: return {MutexResult::timed_out, rc};
    case EDEADLK: return {MutexResult::self_deadlock, rc};
    case ENOTRECOVERABLE: return {MutexResult::not_recoverable, rc};
    default: return {MutexResult::error, rc};
  }
}

int robust_mutex_unlock(pthread_mutex_t* m) noexcept { return ::pthread_mutex_unlock(m); }

MutexOwner robust_mutex_owner(const pthread_mutex_t* m) noexcept {
  // glibc keeps the futex word in __data.__lock, for PI mutexes too. Read once, atomically: the
  // owner and the kernel change it concurrently.
  auto& word = const_cast<int&>(m->__data.__lock);  // NOLINT(cppcoreguidelines-pro-type-const-cast)
  const auto v = static_cast<uint32_t>(std::atomic_ref<int>(word).load(std::memory_order_acquire));
  return MutexOwner{v & FUTEX_TID_MASK, (v & FUTEX_OWNER_DIED) != 0};
}

}  // namespace holdfast::sys
