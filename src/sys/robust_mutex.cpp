#include "sys/robust_mutex.hpp"

#include <linux/futex.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>

#if defined(__SANITIZE_THREAD__)
#define HOLDFAST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOLDFAST_TSAN 1
#endif
#endif

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
#ifdef HOLDFAST_TSAN
    // ThreadSanitizer's timedlock interceptor does not record a lock that returns EOWNERDEAD (its
    // lock and trylock interceptors do), and then reports our unlock as a bug: under TSan, a
    // timed wait polls trylock instead.
    for (;;) {
      rc = ::pthread_mutex_trylock(m);
      if (rc != EBUSY) break;
      timespec now{};
      ::clock_gettime(CLOCK_REALTIME, &now);
      if (now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec)) {
        rc = ETIMEDOUT;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
#else
    rc = ::pthread_mutex_timedlock(m, deadline);
#endif
  } else {
    rc = ::pthread_mutex_lock(m);
  }
  return robust_mutex_outcome(m, rc);
}

MutexLock robust_mutex_outcome(pthread_mutex_t* m, int rc) noexcept {
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

int robust_mutex_unlock_if_owner(pthread_mutex_t* m) noexcept {
#ifdef HOLDFAST_TSAN
  if (!robust_mutex_held_by_caller(m)) return EPERM;
#endif
  return ::pthread_mutex_unlock(m);
}

bool robust_mutex_held_by_caller(pthread_mutex_t* m) noexcept {
  const MutexLock r = robust_mutex_lock(m, true, nullptr);
  if (r.result == MutexResult::acquired || r.result == MutexResult::acquired_owner_died) {
    ::pthread_mutex_unlock(m);
    return false;
  }
  return r.result == MutexResult::self_deadlock;
}

MutexOwner robust_mutex_owner(const pthread_mutex_t* m) noexcept {
  // glibc keeps the futex word in __data.__lock, for PI mutexes too. Read once, atomically: the
  // owner and the kernel change it concurrently.
  auto& word = const_cast<int&>(m->__data.__lock);  // NOLINT(cppcoreguidelines-pro-type-const-cast)
  const auto v = static_cast<uint32_t>(std::atomic_ref<int>(word).load(std::memory_order_acquire));
  return MutexOwner{v & FUTEX_TID_MASK, (v & FUTEX_OWNER_DIED) != 0};
}

}  // namespace holdfast::sys
