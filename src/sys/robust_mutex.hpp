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

#include <linux/futex.h>
#include <pthread.h>
#include <time.h>

#include <cstddef>
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

// ---- the uncontended fast path, inline ----
//
// glibc's robust mutex spends more instructions deciding which kind of mutex it has than locking
// it. robust_mutex_lock_forever and robust_mutex_unlock_fast do, for a mutex robust_mutex_init
// made `plain`, exactly what glibc's pthread_mutex_lock and pthread_mutex_unlock do on their
// uncontended path — the same futex word (owner TID), the same bookkeeping fields, the same
// robust-list protocol with the kernel (list_op_pending set around every change, the entry linked
// at the head of the thread's list glibc registered, in glibc's layout) — so the kernel finds and
// recovers the mutex at the owner's death exactly as it would glibc's, and either side may lock
// what the other unlocks. Everything else (contended, owner died, EDEADLK, not recoverable) is
// glibc's own call. Off (glibc always) where the layout is not the one this was written against
// (checked once per thread against what the kernel says glibc registered) and under
// ThreadSanitizer (which must see every lock).
namespace robust_detail {
struct ThreadState {
  robust_list_head* head = nullptr;  // this thread's, as glibc registered it with the kernel
  int tid = 0;                       // this thread's id: the futex word's owner value
  int pid = 0;                       // the process it was read in
  int ready = 0;                     // 1: fast path usable; -1: never in this thread; 0: not looked up
};
// Reset in a forked child (its one thread has a new TID and glibc re-registers its list).
extern constinit thread_local ThreadState t_state __attribute__((tls_model("initial-exec")));
// Looks this thread's state up (once per thread); returns ready.
[[gnu::cold]] int init_thread() noexcept;
// futex(FUTEX_WAKE, 1) on the word, shared (robust mutexes' waiters wait on the shared futex).
[[gnu::cold]] void wake_one(pthread_mutex_t* m) noexcept;
// After the fast path took a word whose __owner was not 0: not recoverable (someone unlocked it
// without making it consistent) gives it back and returns false (glibc then says so); any other
// value is overwritten.
[[gnu::cold]] bool accept_owner_field(pthread_mutex_t* m, ThreadState& t) noexcept;

// glibc's robust-list entry of a mutex: the __list.__next field (robust_list_head.futex_offset
// leads from there to the word); __prev fields point at the previous entry's __next field.
inline __pthread_list_t* list_of(void* next_field) noexcept {
  return reinterpret_cast<__pthread_list_t*>(  // NOLINT(performance-no-int-to-ptr)
      (reinterpret_cast<uintptr_t>(next_field) & ~uintptr_t{1}) - offsetof(__pthread_list_t, __next));
}

// Takes `m` if it is free: the word CAS'd from 0 to our TID with list_op_pending naming it, then
// linked at the head of the thread's robust list, then list_op_pending cleared — the kernel,
// walking the list and the pending entry at our death, finds it in every state in between.
inline bool lock_fast(pthread_mutex_t* m, ThreadState& t) noexcept {
  auto& d = m->__data;
  robust_list_head* head = t.head;
  auto* entry = reinterpret_cast<robust_list*>(&d.__list.__next);
  head->list_op_pending = entry;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  int expected = 0;
  if (!__atomic_compare_exchange_n(&d.__lock, &expected, t.tid, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    head->list_op_pending = nullptr;
    return false;
  }
  if (d.__owner != 0 && !accept_owner_field(m, t)) [[unlikely]] return false;
  d.__count = 1;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  robust_list* first = head->list.next;
  list_of(first)->__prev = reinterpret_cast<__pthread_list_t*>(entry);
  d.__list.__next = reinterpret_cast<__pthread_list_t*>(first);
  d.__list.__prev = reinterpret_cast<__pthread_list_t*>(head);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  head->list.next = entry;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  head->list_op_pending = nullptr;
  d.__owner = t.tid;
  ++d.__nusers;
  return true;
}

// Unlocks `m` if this thread owns it consistently: list_op_pending set, unlinked, the word
// exchanged to 0 (waking a waiter if it had FUTEX_WAITERS), list_op_pending cleared. False (and
// nothing changed) otherwise: glibc decides (EPERM, or an inconsistent owner-dead mutex).
inline bool unlock_fast(pthread_mutex_t* m, ThreadState& t) noexcept {
  auto& d = m->__data;
  if ((static_cast<unsigned>(__atomic_load_n(&d.__lock, __ATOMIC_RELAXED)) & FUTEX_TID_MASK) !=
          static_cast<unsigned>(t.tid) ||
      d.__owner != t.tid) {
    return false;
  }
  robust_list_head* head = t.head;
  head->list_op_pending = reinterpret_cast<robust_list*>(&d.__list.__next);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  list_of(d.__list.__next)->__prev = d.__list.__prev;
  list_of(d.__list.__prev)->__next = d.__list.__next;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  d.__list.__prev = nullptr;
  d.__list.__next = nullptr;
  d.__owner = 0;
  --d.__nusers;
  if ((static_cast<unsigned>(__atomic_exchange_n(&d.__lock, 0, __ATOMIC_RELEASE)) & FUTEX_WAITERS) != 0) wake_one(m);
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  head->list_op_pending = nullptr;
  return true;
}
}  // namespace robust_detail

// How long a waiter on a `plain` robust mutex sleeps before it looks again. The kernel's
// owner-death handling cannot wake everyone a dead owner should have woken: an owner SIGKILLed
// between its release of the word and its wake-up call, while a third thread takes the word in
// between, leaves a sleeping waiter whose FUTEX_WAITERS bit is gone with the word — nobody will
// ever wake it (the kernel wakes on a pending release only when the word is still free). So
// waiters on plain mutexes never sleep unbounded: each slice ends, the waiter looks again and
// sets FUTEX_WAITERS again. Such a loss costs one waiter at most one slice, never the lock.
// (Priority-inheritance mutexes are handed over by the kernel, which knows its waiters.)
inline constexpr long kPlainWaitSliceNs = 100'000'000;

// Waits for `m` (plain) in slices of kPlainWaitSliceNs, until it is taken or until the
// CLOCK_REALTIME time `*deadline` (null: forever).
[[gnu::cold]] MutexLock robust_mutex_wait_plain(pthread_mutex_t* m, const timespec* deadline) noexcept;

// robust_mutex_lock(m, false, nullptr), with the uncontended case inline and without glibc's
// dispatch on the mutex kind, and waits in slices (kPlainWaitSliceNs). For `plain` robust
// mutexes only.
inline MutexLock robust_mutex_lock_forever(pthread_mutex_t* m) noexcept {
  robust_detail::ThreadState& t = robust_detail::t_state;
  if ((t.ready > 0 || (t.ready == 0 && robust_detail::init_thread() > 0)) && robust_detail::lock_fast(m, t)) {
    return MutexLock{MutexResult::acquired, 0};
  }
  return robust_mutex_wait_plain(m, nullptr);
}

// robust_mutex_unlock_if_owner, with the common case inline. For `plain` robust mutexes only.
int robust_mutex_unlock_if_owner(pthread_mutex_t* m) noexcept;
inline int robust_mutex_unlock_fast(pthread_mutex_t* m) noexcept {
  robust_detail::ThreadState& t = robust_detail::t_state;
  if (t.ready > 0 && robust_detail::unlock_fast(m, t)) return 0;
  return robust_mutex_unlock_if_owner(m);
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
