#include "sys/robust_mutex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <mutex>
#include <thread>

#if defined(__SANITIZE_THREAD__)
#define HOLDFAST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOLDFAST_TSAN 1
#endif
#endif

namespace holdfast::sys {

namespace robust_detail {

constinit thread_local ThreadState t_state __attribute__((tls_model("initial-exec")));

int init_thread() noexcept {
  ThreadState& t = t_state;
  t.ready = -1;
#if !defined(HOLDFAST_TSAN) && __PTHREAD_MUTEX_HAVE_PREV
  // The list glibc registered for this thread, and the offset from an entry to its futex word:
  // the fast path links entries exactly as glibc does, so it must be glibc's list and layout.
  robust_list_head* head = nullptr;
  size_t len = 0;
  if (::syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head == nullptr || len != sizeof(robust_list_head)) {
    return t.ready;
  }
  constexpr long kOffset = static_cast<long>(offsetof(pthread_mutex_t, __data.__lock)) -
                           static_cast<long>(offsetof(pthread_mutex_t, __data.__list.__next));
  if (head->futex_offset != kOffset) return t.ready;
  static std::once_flag reset_at_fork;
  std::call_once(reset_at_fork, [] { ::pthread_atfork(nullptr, nullptr, [] { t_state = ThreadState{}; }); });
  t.head = head;
  t.tid = static_cast<int>(::gettid());
  t.pid = static_cast<int>(::getpid());
  t.ready = 1;
#endif
  return t.ready;
}

void wake_one(pthread_mutex_t* m) noexcept { ::syscall(SYS_futex, &m->__data.__lock, FUTEX_WAKE, 1, nullptr, nullptr, 0); }

bool accept_owner_field(pthread_mutex_t* m, ThreadState& t) noexcept {
  constexpr int kNotRecoverable = INT_MAX - 1;  // glibc's PTHREAD_MUTEX_NOTRECOVERABLE
  if (m->__data.__owner != kNotRecoverable) return true;
  // Give the word back as glibc's unlock would; glibc's own lock then reports ENOTRECOVERABLE.
  if ((static_cast<unsigned>(__atomic_exchange_n(&m->__data.__lock, 0, __ATOMIC_RELEASE)) & FUTEX_WAITERS) != 0) {
    wake_one(m);
  }
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  t.head->list_op_pending = nullptr;
  return false;
}

}  // namespace robust_detail

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

MutexLock robust_mutex_wait_plain(pthread_mutex_t* m, const timespec* deadline) noexcept {
  for (;;) {
    timespec slice{};
    ::clock_gettime(CLOCK_REALTIME, &slice);
    slice.tv_nsec += kPlainWaitSliceNs;
    if (slice.tv_nsec >= 1'000'000'000) {
      slice.tv_sec += 1;
      slice.tv_nsec -= 1'000'000'000;
    }
    const bool last = deadline != nullptr && (deadline->tv_sec < slice.tv_sec ||
                                              (deadline->tv_sec == slice.tv_sec && deadline->tv_nsec <= slice.tv_nsec));
    const MutexLock r = robust_mutex_lock(m, false, last ? deadline : &slice);
    if (r.result != MutexResult::timed_out || last) return r;
  }
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
