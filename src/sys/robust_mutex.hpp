// sys/robust_mutex: a process-shared, robust, error-checking pthread mutex in MAP_SHARED memory.
//
// Owner death is the kernel's to detect: glibc registers every robust mutex a thread holds on
// that thread's robust list (set_robust_list, which glibc owns for every thread), and when the
// thread dies — SIGKILL at any instruction, exit, or exec — the kernel marks the mutex's futex
// word FUTEX_OWNER_DIED and wakes a waiter, which then gets EOWNERDEAD and owns the mutex.
// robust_mutex_lock makes the mutex consistent at once (pthread_mutex_consistent), so EOWNERDEAD
// never becomes ENOTRECOVERABLE: what the caller keeps under the mutex must be valid at every
// instruction (a single atomic store, a seqlock), so there is nothing to repair. If the caller
// dies between EOWNERDEAD and the consistent call, the kernel marks the word again, and the next
// locker gets EOWNERDEAD in turn.
//
// `fifo` mutexes use priority inheritance (PTHREAD_PRIO_INHERIT): a contended unlock is done by
// the kernel (FUTEX_UNLOCK_PI), which hands the lock straight to its top waiter — the longest
// waiting of the highest priority, so FIFO among equal priorities — and nobody can barge in
// between. Plain ones are glibc's ordinary futex mutex: faster handoffs, no order.
//
// A mutex is owned by a thread: only that thread unlocks it (others get EPERM), and it is freed
// (as owner-dead) when that thread exits. Owners are named by TID in the futex word, which is
// only meaningful inside one pid namespace (callers refuse to share across namespaces).
#pragma once

#include <pthread.h>
#include <time.h>

#include <cstdint>

namespace holdfast::sys {

enum class RobustKind { plain, fifo };

// Initialises the mutex at `m` (memory nobody else uses yet). Returns 0 or an errno value.
int robust_mutex_init(pthread_mutex_t* m, RobustKind kind) noexcept;

enum class MutexResult {
  acquired,             // now owned by this thread
  acquired_owner_died,  // now owned; its previous owner died holding it (already made consistent)
  busy,                 // try only: another thread owns it
  timed_out,            // the deadline passed
  self_deadlock,        // this thread already owns it (EDEADLK)
  not_recoverable,      // ENOTRECOVERABLE: someone unlocked it without making it consistent
  error,                // another errno (see `err`)
};
struct MutexLock {
  MutexResult result;
  int err;  // the errno value behind `result` (0 when acquired)
};

// Locks `m`: try only (`try_only`), until the CLOCK_REALTIME time `*deadline`, or forever
// (`deadline` null).
MutexLock robust_mutex_lock(pthread_mutex_t* m, bool try_only, const timespec* deadline) noexcept;

// What pthread_mutex_lock's (or trylock's, timedlock's) return value `rc` on `m` means, with an
// EOWNERDEAD made consistent at once (as robust_mutex_lock does).
MutexLock robust_mutex_outcome(pthread_mutex_t* m, int rc) noexcept;

// robust_mutex_lock(m, false, nullptr) with the common case (acquired at once or after a wait)
// inline: for callers whose whole grant costs about as much as a function call.
inline MutexLock robust_mutex_lock_forever(pthread_mutex_t* m) noexcept {
  const int rc = ::pthread_mutex_lock(m);
  return rc == 0 ? MutexLock{MutexResult::acquired, 0} : robust_mutex_outcome(m, rc);
}

// Unlocks `m`; 0 or an errno value (EPERM: this thread does not own it).
int robust_mutex_unlock(pthread_mutex_t* m) noexcept;

// Unlocks `m` if the calling thread owns it; EPERM, and nothing changes, if it does not. glibc's
// robust, error-checking and PI mutexes check the owner themselves (a user-space compare, no
// system call); under ThreadSanitizer, which reports an unlock by a non-owner, the ownership is
// checked first with robust_mutex_held_by_caller.
int robust_mutex_unlock_if_owner(pthread_mutex_t* m) noexcept;

// True if the calling thread owns `m`: the owner's trylock of an error-checking mutex says
// EDEADLK, a userspace check (no system call). A free mutex the check takes is let go again.
// Lets a caller refuse an unlock from the wrong thread before changing anything.
bool robust_mutex_held_by_caller(pthread_mutex_t* m) noexcept;

// Who owns `m`, read from its futex word without taking it (glibc's layout: the word is the
// owner's TID, plus FUTEX_OWNER_DIED once the kernel found the owner dead).
struct MutexOwner {
  uint32_t tid = 0;         // 0: free
  bool owner_died = false;  // the kernel marked the owner dead; the next locker recovers it
};
MutexOwner robust_mutex_owner(const pthread_mutex_t* m) noexcept;

}  // namespace holdfast::sys
