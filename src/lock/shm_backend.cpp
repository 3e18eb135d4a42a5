// shm backend: a same-machine lock in a small shared mapping, taken and released without system
// calls when uncontended. docs/LOCKS.md, "The shm backend".
//
// The mapping is a file in the state directory named after the lock file's identity (device,
// inode, birth time: `<key>.shm`, beside the kernel locks' `<key>.fence` and `<key>.holder`);
// nothing is created beside the user's file, which is opened (created if missing) only to learn
// that identity, and never written. What the mapping holds:
//
//   gate        robust, process-shared mutex (sys/robust_mutex.hpp): held by the exclusive holder
//               for the whole grant, and briefly by a shared holder while it takes a reader slot.
//               Owner death is detected by the kernel (robust list) and recovered at once.
//   fair_gate   the same with priority inheritance: the kernel hands it over in FIFO order. Fair
//               lockers take it before the gate, and hold both.
//   readers     64 reader slots, each a robust mutex held by one shared holder for its grant, and
//               a bitmap of the slots in use. An exclusive locker, holding the gate (so no new
//               reader enters), waits on every slot whose bit is set; a dead reader's slot comes
//               back as owner-dead and is freed.
//   last_token  the last fencing token issued (epoch << 32 | counter). Incremented by the
//               exclusive holder with one atomic store, so a holder that dies anywhere either
//               never stored its token (and never handed it out) or consumed it for good: a token
//               never repeats. The epoch is the durable part: written to the mapping's file and
//               synced (msync) before any token of it is issued, once per boot (and whenever the
//               32-bit counter runs out); a new epoch is max(last durable + 1, last token's
//               epoch + 1, unix seconds), so tokens also rise across reboots and a lost file.
//   record      the exclusive holder's record in a fixed-size slot, under a sequence counter
//               (odd while being written): no syscall, no allocation. Readers retry while odd.
//   header      magic, version, size, and the boot id, machine id, host and pid namespace of
//               the boot that initialised it. A mapping from another boot is reinitialised (its
//               futex words name threads of a boot that is gone) keeping its token state; one
//               from another pid namespace is refused (owners are TIDs: meaningless there); one
//               with any other mismatch, or truncated, is corrupt: fail closed, one line.
//
// Initialisation and validation happen once per open, under flock(2) on the mapping's own file
// (shared to validate, exclusive to initialise), so two processes of a new boot never initialise
// over each other, and a process never uses a half-initialised mapping.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "lock/shm.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"
#include "sys/robust_mutex.hpp"

namespace holdfast::lock_internal {
namespace {

constexpr char kMagic[8] = {'h', 'f', 's', 'h', 'm', 'l', 'k', '\n'};
constexpr uint32_t kVersion = 1;
constexpr size_t kReaderSlots = 64;
constexpr size_t kRecordProcesses = 4;
constexpr size_t kCommandBytes = 1024;
constexpr size_t kMapSize = 16384;
constexpr uint64_t kCounterMask = 0xffffffffULL;

struct ProcSlot {
  std::atomic<uint64_t> pid;
  std::atomic<uint64_t> start_time;
  std::atomic<uint64_t> pid_ns;
  std::atomic<uint64_t> time_ns;
};

// The exclusive holder's record. Written only by the gate's owner; read by anyone (inspection)
// under the sequence counter.
struct RecordSlot {
  std::atomic<uint64_t> seq;  // odd while being written
  std::atomic<uint64_t> token;
  std::atomic<uint64_t> nonce;
  std::atomic<int64_t> acquired_unix_ns;
  std::atomic<uint32_t> processes;
  std::atomic<uint32_t> command_bytes;  // argv joined by NUL, at most kCommandBytes
  ProcSlot process[kRecordProcesses];
  std::atomic<uint64_t> command[kCommandBytes / 8];
};

struct alignas(64) ReaderSlot {
  pthread_mutex_t mutex;
  std::atomic<uint64_t> pid;
  std::atomic<uint64_t> start_time;
};

struct Layout {
  // Header: written at initialisation only (under the file's exclusive flock).
  char magic[8];
  uint32_t version;
  uint32_t size;
  char boot_id[64];
  char machine_id[64];
  char host[128];
  uint64_t pid_ns;
  std::atomic<uint64_t> durable_epoch;  // synced before any token of it is issued
  std::atomic<uint64_t> recoveries;     // grants that found their previous holder dead
  alignas(64) pthread_mutex_t gate;
  alignas(64) pthread_mutex_t fair_gate;
  alignas(64) std::atomic<uint64_t> last_token;
  std::atomic<uint64_t> readers;  // bit i: reader slot i is taken
  alignas(64) RecordSlot record;
  ReaderSlot reader[kReaderSlots];
};
static_assert(sizeof(Layout) <= kMapSize);
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

// Test hook: HOLDFAST_TEST_SHM_STOP_AT=<point>[:<n>] makes the process stop itself (SIGSTOP) the
// n-th time (default: the first) it passes that point of an acquire or release, so a test can
// SIGKILL it exactly there (":2" reaches a repeated grant's paths). Read once per mapping.
struct TestHook {
  std::string point;  // empty: no hook
  int passes_left = 0;  // passes of `point` before the one that stops
};
// Out of line: a grant passes six points, and without the hook each costs one test.
[[gnu::noinline, gnu::cold]] void stop_at(TestHook& hook, std::string_view point) {
  if (hook.point == point && hook.passes_left-- == 0) ::raise(SIGSTOP);
}
inline void stop_for_test(TestHook& hook, std::string_view point) {
  if (!hook.point.empty()) [[unlikely]] stop_at(hook, point);
}

uint64_t unix_seconds() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

template <size_t N>
void copy_field(char (&out)[N], const std::string& s) {
  std::memset(out, 0, N);
  std::memcpy(out, s.data(), std::min(s.size(), N - 1));
}

template <size_t N>
std::string field(const char (&in)[N]) {
  return std::string(in, strnlen(in, N));
}

bool all_zero(const char* p, size_t n) {
  return std::all_of(p, p + n, [](char c) { return c == 0; });
}

// A steady-clock deadline as the CLOCK_REALTIME time pthread_mutex_timedlock wants.
timespec realtime_deadline(Clock::time_point deadline) {
  auto left = std::max(deadline - Clock::now(), Clock::duration::zero());
  auto when = std::chrono::system_clock::now().time_since_epoch() +
              std::chrono::duration_cast<std::chrono::system_clock::duration>(left);
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(when).count();
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

[[noreturn]] void throw_corrupt(const std::string& file, const std::string& why) {
  throw Error(file, "shm lock mapping is corrupt",
              why + "; remove it only when no process uses the lock", exit_code::data);
}

// The lock file's identity, from an open of the lock path like flock(1)'s (created empty if
// missing, never through a dangling symlink, never written). Returns the open descriptor.
sys::UniqueFd open_lock_path(const Target& target, struct stat& st) {
  struct stat pre {};
  auto lockable = [](mode_t m) { return S_ISREG(m) || S_ISDIR(m); };
  if (sys::stat_nothrow(target.path, pre) == 0 && !lockable(pre.st_mode)) {
    throw Error(target.path, "cannot use as lock file", "not a regular file or directory", exit_code::cant_create);
  }
  const int flags = O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC | target.extra_open_flags;
  int fd = -ENOENT;
  for (int round = 0; round < 4 && fd == -ENOENT; ++round) {
    fd = sys::open_nothrow(AT_FDCWD, target.path, flags);
    if (fd == -ENOENT) fd = sys::open_nothrow(AT_FDCWD, target.path, flags | O_CREAT | O_EXCL, 0666);
    if (fd == -EEXIST) fd = -ENOENT;  // appeared meanwhile, or a dangling symlink: retry
  }
  if (fd == -ENOENT) {
    throw Error(target.path, "cannot create lock file", "it is a dangling symbolic link", exit_code::no_input);
  }
  if (fd < 0) throw_open_error(-fd, target, target.path);
  sys::UniqueFd owned(fd);
  if (sys::fstat_nothrow(fd, st) < 0) throw Error(errno, target.path, "cannot stat lock file");
  if (!lockable(st.st_mode)) {
    throw Error(target.path, "cannot use as lock file", "not a regular file or directory", exit_code::cant_create);
  }
  return owned;
}

}  // namespace

// An open, validated mapping. Unmapped only when nothing in it can still be held by this process
// (the kernel walks a dying thread's robust list by address: a mutex it holds must stay mapped).
struct ShmMapping {
  std::string file;     // the mapping's path in the state directory
  struct stat lock_st {};  // the lock file it belongs to
  Layout* map = nullptr;
  TestHook hook;        // HOLDFAST_TEST_SHM_STOP_AT
  // LockFile::Guard's nonce of a grant is its token xor this (random per open mapping): unique
  // per grant as tokens are, without a read-modify-write per grant.
  uint64_t nonce_key = 0;
  // The record slot's sequence number after this process's last write, and how many processes it
  // wrote: if the slot still has it, nobody wrote since, and only the per-grant fields change.
  uint64_t written_seq = 0;
  size_t written_processes = 0;
  pid_t written_pid = 0;

  ShmMapping() = default;
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;
  ~ShmMapping() {
    if (map != nullptr) ::munmap(map, kMapSize);
  }
};

namespace {

// Writes a fresh header (a new boot, or a never completed initialisation), keeping the token
// state so tokens keep rising. Called under the file's exclusive flock.
void initialise(Layout* m, int fd, const std::string& file, bool created) {
  const ProcessIdentity self = self_identity();
  uint64_t epoch = std::max({m->durable_epoch.load() + 1, (m->last_token.load() >> 32) + 1, unix_seconds()});
  if (epoch > kCounterMask) throw Error(file, "fencing tokens exhausted", "the epoch reached 2^32", exit_code::data);
  std::memset(m->magic, 0, sizeof m->magic);
  m->durable_epoch.store(epoch);
  m->last_token.store(epoch << 32);
  m->readers.store(0);
  m->recoveries.store(0);
  m->record.seq.store(0);
  m->record.token.store(0);
  if (int rc = sys::robust_mutex_init(&m->gate, sys::RobustKind::plain); rc != 0) {
    throw Error(rc, file, "cannot initialise shm lock");
  }
  if (int rc = sys::robust_mutex_init(&m->fair_gate, sys::RobustKind::fifo); rc != 0) {
    throw Error(rc, file, "cannot initialise shm lock (priority-inheritance mutex)");
  }
  for (auto& slot : m->reader) {
    if (int rc = sys::robust_mutex_init(&slot.mutex, sys::RobustKind::plain); rc != 0) {
      throw Error(rc, file, "cannot initialise shm lock");
    }
    slot.pid.store(0);
  }
  m->version = kVersion;
  m->size = kMapSize;
  m->pid_ns = self.pid_ns;
  copy_field(m->machine_id, self.machine_id);
  copy_field(m->host, self.host);
  // The epoch must be on disk before a token of it is issued: after a crash the next boot starts
  // above it. The directory entry too, for a new file.
  if (::msync(m, kMapSize, MS_SYNC) != 0) throw Error(errno, file, "cannot sync shm lock mapping");
  if (created) {
    sys::UniqueFd dir(sys::open_nothrow(AT_FDCWD, sys::dirname_of(file), O_RDONLY | O_DIRECTORY));
    if (dir && sys::fsync_nothrow(dir.get()) < 0) throw Error(errno, sys::dirname_of(file), "cannot sync directory");
  }
  copy_field(m->boot_id, this_boot_id());
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(m->magic, kMagic, sizeof kMagic);
  (void)fd;
}

enum class HeaderState { ready, needs_init, foreign_namespace };

HeaderState judge_header(const Layout* m, const std::string& file) {
  if (all_zero(m->magic, sizeof m->magic)) return HeaderState::needs_init;  // never completed
  if (std::memcmp(m->magic, kMagic, sizeof kMagic) != 0) throw_corrupt(file, "bad magic");
  if (m->version != kVersion || m->size != kMapSize) throw_corrupt(file, "unknown version or size");
  if ((m->last_token.load() >> 32) < m->durable_epoch.load()) throw_corrupt(file, "token below its durable epoch");
  if (field(m->boot_id) != this_boot_id()) return HeaderState::needs_init;  // a previous boot's
  if (m->pid_ns != self_identity().pid_ns) return HeaderState::foreign_namespace;
  return HeaderState::ready;
}

// Opens, validates (initialising it when new or from another boot) and maps the mapping of the
// lock file open at `lock_fd`.
std::shared_ptr<ShmMapping> open_mapping(const Target& target, int lock_fd, const struct stat& st) {
  if (this_boot_id().empty()) {
    throw Error(target.path, "cannot use the shm backend",
                "this machine's boot id cannot be read, so a mapping from a previous boot cannot be told apart",
                exit_code::unavailable);
  }
  std::string why;
  auto paths = side_state_for(lock_fd, st, &why);
  if (!paths) throw Error(target.path, "cannot use the shm backend", why, exit_code::unavailable);
  // The state files are named <key>.fence, <key>.holder; the mapping is <key>.shm.
  auto mapping = std::make_shared<ShmMapping>();
  mapping->file = paths->fence.substr(0, paths->fence.size() - std::strlen(".fence")) + ".shm";
  mapping->lock_st = st;
  bool created = false;
  int raw = open_state_file(*paths, mapping->file, &created);
  if (raw == -EPERM) {
    throw Error(mapping->file, "cannot use shm lock mapping", "not owned by root, you or the lock file's owner",
                exit_code::no_perm);
  }
  if (raw < 0) throw Error(-raw, mapping->file, "cannot open shm lock mapping");
  sys::UniqueFd fd(raw);
  ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);

  auto flock_retry = [&](int op) {
    while (::flock(fd.get(), op) != 0) {
      if (errno != EINTR) throw Error(errno, mapping->file, "cannot lock shm lock mapping");
    }
  };
  for (int op : {LOCK_SH, LOCK_EX}) {
    flock_retry(op);
    struct stat fst {};
    if (sys::fstat_nothrow(fd.get(), fst) < 0) throw Error(errno, mapping->file, "cannot stat shm lock mapping");
    const bool empty = fst.st_size == 0;
    if (!empty && fst.st_size != static_cast<off_t>(kMapSize)) {
      throw_corrupt(mapping->file, "size " + std::to_string(fst.st_size) + ", expected " + std::to_string(kMapSize));
    }
    if (empty && op == LOCK_SH) continue;  // initialise under the exclusive lock
    if (empty && ::ftruncate(fd.get(), static_cast<off_t>(kMapSize)) != 0) {
      throw Error(errno, mapping->file, "cannot size shm lock mapping");
    }
    if (mapping->map == nullptr) {
      void* p = ::mmap(nullptr, kMapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
      if (p == MAP_FAILED) throw Error(errno, mapping->file, "cannot map shm lock mapping");
      mapping->map = static_cast<Layout*>(p);
    }
    HeaderState state = judge_header(mapping->map, mapping->file);
    if (state == HeaderState::needs_init && op == LOCK_EX) {
      initialise(mapping->map, fd.get(), mapping->file, created || empty);
      state = judge_header(mapping->map, mapping->file);
    }
    if (state == HeaderState::foreign_namespace) {
      throw Error(target.path, "cannot use the shm backend",
                  "its mapping " + mapping->file + " is in use from another pid namespace (owners are thread ids, "
                  "which mean nothing across namespaces); use the flock backend",
                  exit_code::unavailable);
    }
    if (state == HeaderState::ready) break;
  }
  ::flock(fd.get(), LOCK_UN);
  // The mapping keeps the file's pages; the descriptor is no longer needed (the epoch is synced
  // through msync on the mapping itself).
  const char* hook = std::getenv("HOLDFAST_TEST_SHM_STOP_AT");  // NOLINT(concurrency-mt-unsafe)
  if (hook != nullptr) {
    const std::string_view h(hook);
    const size_t colon = h.find(':');
    mapping->hook.point = std::string(h.substr(0, colon));
    if (colon != std::string_view::npos) mapping->hook.passes_left = std::max(0, std::atoi(hook + colon + 1) - 1);
  }
  mapping->nonce_key = sys::random_u64();
  return mapping;
}

// Mappings of grants that were detached: the lock is still held by this thread, so the mutex
// must stay mapped for the kernel's robust-list walk when the thread exits.
std::mutex g_detached_mu;
std::vector<std::shared_ptr<ShmMapping>>& detached_mappings() {
  static auto* kept = new std::vector<std::shared_ptr<ShmMapping>>();  // never destroyed
  return *kept;
}

// What a lock of `m` came back with: a recovery is counted; a broken mutex throws.
[[gnu::noinline]] sys::MutexResult judge_outcome(const sys::MutexLock& r, const ShmMapping& mapping) {
  if (r.result == sys::MutexResult::acquired_owner_died) {
    mapping.map->recoveries.fetch_add(1, std::memory_order_relaxed);
  }
  if (r.result == sys::MutexResult::not_recoverable) {
    throw Error(mapping.file, "shm lock is not recoverable",
                "a program unlocked it without recovering it; remove the file only when no process uses the lock",
                exit_code::data);
  }
  if (r.result == sys::MutexResult::error) throw Error(r.err, mapping.file, "cannot take shm lock");
  return r.result;
}

// lock_mutex for a wait that may end (try only, or a deadline).
[[gnu::noinline]] sys::MutexResult lock_mutex_bounded(pthread_mutex_t* m, const WaitSpec& wait,
                                                      const ShmMapping& mapping) {
  for (;;) {
    sys::MutexLock r{};
    if (wait.kind == WaitSpec::none) {
      r = sys::robust_mutex_lock(m, true, nullptr);
    } else {
      const timespec when = realtime_deadline(wait.deadline);
      // Plain mutexes are waited for in slices (sys::kPlainWaitSliceNs says why); the fair gate
      // is handed over by the kernel.
      r = m == &mapping.map->fair_gate ? sys::robust_mutex_lock(m, false, &when) : sys::robust_mutex_wait_plain(m, &when);
      // The wall clock may have been stepped: the steady deadline is the one that counts.
      if (r.result == sys::MutexResult::timed_out && !wait.expired()) continue;
    }
    return judge_outcome(r, mapping);
  }
}

// Locks `m` as `wait` allows. Returns the outcome (acquired, acquired_owner_died, busy, timed_out,
// self_deadlock); throws for a broken mutex. The common case (wait forever, granted) is inline.
inline sys::MutexResult lock_mutex(pthread_mutex_t* m, const WaitSpec& wait, const ShmMapping& mapping) {
  if (wait.kind != WaitSpec::forever) return lock_mutex_bounded(m, wait, mapping);
  // The fair gate is a priority-inheritance mutex: glibc's alone (the kernel owns its handoff).
  const sys::MutexLock r = m == &mapping.map->fair_gate ? sys::robust_mutex_lock(m, false, nullptr)
                                                         : sys::robust_mutex_lock_forever(m);
  return r.result == sys::MutexResult::acquired ? r.result : judge_outcome(r, mapping);
}

bool acquired(sys::MutexResult r) {
  return r == sys::MutexResult::acquired || r == sys::MutexResult::acquired_owner_died;
}

// The time a grant's record gives (LockOptions::grant_time).
int64_t grant_time_ns(GrantTime how) noexcept {
  if (how == GrantTime::precise) return unix_ns_now();
  if (how == GrantTime::none) return 0;
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME_COARSE, &now);
  return static_cast<int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// The 32-bit counter ran out: a new epoch, durably, before any token of it. Holding the gate.
[[gnu::noinline]] uint64_t new_epoch(ShmMapping& mapping) {
  Layout* m = mapping.map;
  const uint64_t epoch = std::max({m->durable_epoch.load() + 1, (m->last_token.load() >> 32) + 1, unix_seconds()});
  if (epoch > kCounterMask) {
    throw Error(mapping.file, "fencing tokens exhausted", "the epoch reached 2^32", exit_code::data);
  }
  m->durable_epoch.store(epoch);
  if (::msync(m, kMapSize, MS_SYNC) != 0) throw Error(errno, mapping.file, "cannot sync fencing epoch");
  return (epoch << 32) | 1;
}

// Issues the next fencing token, holding the gate: one atomic store, so a holder that dies
// anywhere either never handed it out or consumed it for good.
inline uint64_t issue_token(ShmMapping& mapping) {
  Layout* m = mapping.map;
  uint64_t token = m->last_token.load(std::memory_order_relaxed) + 1;
  if ((token & kCounterMask) == 0) [[unlikely]] token = new_epoch(mapping);
  m->last_token.store(token, std::memory_order_relaxed);
  stop_for_test(mapping.hook, "shm-token-issued");
  return token;
}

// Stores a grant's own fields (token, nonce, time) in the record slot, under its sequence
// counter, when the slot still holds this handle's last complete record with `processes`
// processes, the first `pid`; false, and nothing written, when it does not (write_slot then
// writes it all). Exclusive holders only.
inline bool write_slot_head(ShmMapping& mapping, uint64_t token, uint64_t nonce, int64_t acquired_unix_ns,
                            size_t processes, pid_t pid) {
  RecordSlot& r = mapping.map->record;
  const uint64_t seq = r.seq.load(std::memory_order_relaxed);
  if (seq != mapping.written_seq || processes != mapping.written_processes || pid != mapping.written_pid) {
    return false;
  }
  r.seq.store(seq | 1, std::memory_order_relaxed);  // odd: being written
  std::atomic_thread_fence(std::memory_order_release);
  r.token.store(token, std::memory_order_relaxed);
  r.nonce.store(nonce, std::memory_order_relaxed);
  r.acquired_unix_ns.store(acquired_unix_ns, std::memory_order_relaxed);
  stop_for_test(mapping.hook, "shm-record-torn");
  r.seq.store((seq | 1) + 1, std::memory_order_release);
  mapping.written_seq = (seq | 1) + 1;
  return true;
}

// The fixed-size record slot, under its sequence counter: only the grant's own fields when the
// slot still has the rest from this handle's last write. Exclusive holders only.
void write_slot(ShmMapping& mapping, const HolderRecord& record) {
  RecordSlot& r = mapping.map->record;
  const size_t n = std::min(record.processes.size(), kRecordProcesses);
  if (write_slot_head(mapping, record.token, record.nonce, record.acquired_unix_ns, n, record.processes.front().pid)) {
    return;
  }
  const uint64_t seq = r.seq.load(std::memory_order_relaxed);
  r.seq.store(seq | 1, std::memory_order_relaxed);  // odd: being written (even if a writer died mid-way)
  std::atomic_thread_fence(std::memory_order_release);
  r.token.store(record.token, std::memory_order_relaxed);
  r.nonce.store(record.nonce, std::memory_order_relaxed);
  r.acquired_unix_ns.store(record.acquired_unix_ns, std::memory_order_relaxed);
  for (size_t i = 0; i < n; ++i) {
    const ProcessIdentity& p = record.processes[i];
    r.process[i].pid.store(static_cast<uint64_t>(p.pid), std::memory_order_relaxed);
    r.process[i].start_time.store(p.start_time, std::memory_order_relaxed);
    r.process[i].pid_ns.store(p.pid_ns, std::memory_order_relaxed);
    r.process[i].time_ns.store(p.time_ns, std::memory_order_relaxed);
  }
  r.processes.store(static_cast<uint32_t>(n), std::memory_order_relaxed);
  stop_for_test(mapping.hook, "shm-record-torn");
  // argv joined by NUL, cut at kCommandBytes, copied a word at a time.
  char buf[kCommandBytes];
  size_t used = 0;
  for (const std::string& arg : record.command) {
    if (used >= sizeof buf) break;
    const size_t take = std::min(arg.size(), sizeof buf - used);
    std::memcpy(buf + used, arg.data(), take);
    used += take;
    if (used < sizeof buf) buf[used++] = '\0';
  }
  std::memset(buf + used, 0, (8 - used % 8) % 8);
  for (size_t w = 0; w * 8 < used; ++w) {
    uint64_t word = 0;
    std::memcpy(&word, buf + w * 8, 8);
    r.command[w].store(word, std::memory_order_relaxed);
  }
  r.command_bytes.store(static_cast<uint32_t>(used), std::memory_order_relaxed);
  r.seq.store((seq | 1) + 1, std::memory_order_release);
  mapping.written_seq = (seq | 1) + 1;
  mapping.written_processes = n;
  mapping.written_pid = record.processes.front().pid;
}

// Holding the gate (so no reader can enter), waits for the readers inside to leave. Returns
// acquired, or what stopped the wait (the gate is still held then).
sys::MutexResult wait_for_readers(ShmMapping& mapping, const WaitSpec& wait) {
  Layout* m = mapping.map;
  uint64_t bits = m->readers.load(std::memory_order_acquire);
  while (bits != 0) {
    const int i = __builtin_ctzll(bits);
    bits &= bits - 1;
    const auto r = lock_mutex(&m->reader[i].mutex, wait, mapping);
    if (!acquired(r)) return r;
    // A reader clears its bit before unlocking; one that died did not.
    m->readers.fetch_and(~(uint64_t{1} << i), std::memory_order_acq_rel);
    sys::robust_mutex_unlock(&m->reader[i].mutex);
  }
  return sys::MutexResult::acquired;
}

// A grant of the shm lock. Destroying it releases what it took, in the thread that took it.
class ShmGrant final : public Lock::State {
 public:
  // Names files->target (no copy); its record is lent by files->records and the loan ends when
  // the grant is destroyed (~State), so a repeated grant copies and allocates nothing for it.
  ShmGrant(const std::shared_ptr<OpenFiles>& open_files, const LockOptions& options)
      : State(open_files, Backend::shm, options.mode, open_files->records.lend(Backend::shm, options.mode, options)),
        mapping_(files->shm.get()),
        fair_(options.fair) {
    claim_files();
  }
  ~ShmGrant() override { end(); }

  ShmGrant(const ShmGrant&) = delete;
  ShmGrant& operator=(const ShmGrant&) = delete;

  // Takes the lock as `wait` allows; false if the wait ended first (nothing is held then).
  bool take(const WaitSpec& wait, const LockOptions& options) {
    Layout* m = mapping_->map;
    if (fair_) {
      const auto r = lock_mutex(&m->fair_gate, wait, *mapping_);
      if (!acquired(r)) return refused(r, wait);
      holds_fair_ = true;
    }
    const auto r = lock_mutex(&m->gate, wait, *mapping_);
    if (!acquired(r)) return refused(r, wait);
    holds_gate_ = true;
    stop_for_test(mapping_->hook, "shm-gate-locked");
    return mode == LockMode::exclusive ? take_exclusive(wait, options) : take_shared(wait, options);
  }

  void release() override {
    if (!held_) return;
    if (in_owner_process()) {
      if (int rc = unlock_all(); rc != 0) {
        throw Error(rc, target.path, rc == EPERM ? "cannot release shm lock from a thread that did not take it"
                                                 : "cannot release shm lock");
      }
    }
    held_ = false;
  }

  void detach() noexcept override {
    if (!held_) return;
    held_ = false;
    keep_mapped();
  }

  void add_holder_process(const ProcessIdentity& process) override {
    record.processes.push_back(process);
    record_cached_ = false;  // no longer the cached shape: not handed back to files->records
    write_record();
  }

  int fd() const noexcept override { return -1; }  // no descriptor carries an shm lock

 private:
  bool refused(sys::MutexResult r, const WaitSpec& wait) {
    if (r == sys::MutexResult::self_deadlock && wait.kind != WaitSpec::none) {
      // Nothing else could ever release it: a blocking wait would last forever.
      unlock_all();
      throw Error(target.path, "shm lock", "this thread already holds it; it would wait on itself forever",
                  exit_code::software);
    }
    unlock_all();
    return false;
  }

  bool take_exclusive(const WaitSpec& wait, const LockOptions& options) {
    if (const auto r = wait_for_readers(*mapping_, wait); !acquired(r)) return refused(r, wait);
    const uint64_t token = issue_token(*mapping_);
    fill_record(token, options);
    write_record();
    stop_for_test(mapping_->hook, "shm-granted");
    return true;
  }

  bool take_shared(const WaitSpec& wait, const LockOptions& options) {
    Layout* m = mapping_->map;
    int slot = -1;
    for (size_t i = 0; i < kReaderSlots && slot < 0; ++i) {
      const auto r = lock_mutex(&m->reader[i].mutex, WaitSpec{WaitSpec::none, {}}, *mapping_);
      if (acquired(r)) slot = static_cast<int>(i);
    }
    if (slot < 0) {
      // Every slot is taken: wait for one (still holding the gate, as a writer would).
      const auto i = static_cast<size_t>(sys::random_u64() % kReaderSlots);
      const auto r = lock_mutex(&m->reader[i].mutex, wait, *mapping_);
      if (!acquired(r)) return refused(r, wait);
      slot = static_cast<int>(i);
    }
    reader_slot_ = slot;
    stop_for_test(mapping_->hook, "shm-reader-slot");
    fill_record(m->last_token.load(std::memory_order_acquire), options);
    const ProcessIdentity& self = record.processes.front();
    m->reader[slot].pid.store(static_cast<uint64_t>(self.pid), std::memory_order_relaxed);
    m->reader[slot].start_time.store(self.start_time, std::memory_order_relaxed);
    m->readers.fetch_or(uint64_t{1} << slot, std::memory_order_acq_rel);
    unlock_gates();
    stop_for_test(mapping_->hook, "shm-granted");
    return true;
  }

  // The grant's record, with `token` and the time of the grant: the LockFile's own record, lent
  // to this grant (no copy, no move), or a copy of it while a Lock from an earlier grant is still
  // alive (its record() must stay its own).
  void fill_record(uint64_t token, const LockOptions& options) {
    if (!record_lent_) {
      record = files->records.take(Backend::shm, mode, options);
      record_cached_ = true;
    }
    record.token = token;
    record.acquired_unix_ns = grant_time_ns(options.grant_time);
  }

  // The record slot (write_slot). Exclusive holders only.
  void write_record() {
    if (mode == LockMode::exclusive) write_slot(*mapping_, record);
  }

  void unlock_gates() noexcept {
    Layout* m = mapping_->map;
    if (holds_gate_) sys::robust_mutex_unlock_fast(&m->gate);
    holds_gate_ = false;
    if (holds_fair_) sys::robust_mutex_unlock(&m->fair_gate);
    holds_fair_ = false;
  }

  // Unlocks everything this grant holds; returns 0 or the first error (EPERM: this thread does
  // not own it, and then nothing is unlocked).
  int unlock_all() noexcept {
    Layout* m = mapping_->map;
    if (reader_slot_ >= 0) {
      pthread_mutex_t* slot = &m->reader[reader_slot_].mutex;
      // Ownership first: clearing the bit of a slot another thread holds would let writers in.
      if (!sys::robust_mutex_held_by_caller(slot)) return EPERM;
      m->readers.fetch_and(~(uint64_t{1} << reader_slot_), std::memory_order_acq_rel);
      stop_for_test(mapping_->hook, "shm-release");
      sys::robust_mutex_unlock(slot);
      reader_slot_ = -1;
    }
    // Both gates were taken by one thread: if the first unlock finds another thread, nothing
    // is unlocked; if it succeeds, the second is ours too.
    if (holds_gate_) {
      stop_for_test(mapping_->hook, "shm-release");
      if (int rc = sys::robust_mutex_unlock_fast(&m->gate); rc != 0) return rc;
      holds_gate_ = false;
    }
    if (holds_fair_) {
      if (int rc = sys::robust_mutex_unlock_if_owner(&m->fair_gate); rc != 0) return rc;
      holds_fair_ = false;
    }
    return 0;
  }

  void end() noexcept {
    if (!held_) return;
    held_ = false;
    // A forked child's copy never releases the parent's lock. Destroyed in a thread that does not
    // own it, the lock stays with its owner thread, which frees it (owner-dead) when it exits.
    if (in_owner_process() && unlock_all() != 0) keep_mapped();
  }

  // The lock stays held by a thread of this process: the kernel finds its mutexes by address
  // when that thread exits, so the mapping must never be unmapped (or something else mapped
  // there) before the process ends.
  void keep_mapped() noexcept {
    std::lock_guard lk(g_detached_mu);
    detached_mappings().push_back(files->shm);
  }

  ShmMapping* mapping_;
  const bool fair_;
  bool holds_fair_ = false;
  bool holds_gate_ = false;
  int reader_slot_ = -1;
};

}  // namespace

std::unique_ptr<Lock::State> shm_acquire(const Target& target, const LockOptions& options, const WaitSpec& wait,
                                         const std::shared_ptr<OpenFiles>& files) {
  for (;;) {
    if (!files->shm) {
      struct stat st {};
      sys::UniqueFd lock_fd = open_lock_path(target, st);
      files->shm = open_mapping(target, lock_fd.get(), st);
    }
    std::unique_ptr<ShmGrant> grant(new ShmGrant(files, options));
    if (!grant->take(wait, options)) return nullptr;
    if (!files->per_grant) return grant;
    // Per-path acquisitions: the lock counts only if the path still names the file whose lock
    // this is (it may have been replaced while we waited).
    struct stat now {};
    if (sys::stat_nothrow(target.path, now) == 0 && sys::same_inode(files->shm->lock_st, now)) return grant;
    grant.reset();
    files->shm.reset();
  }
}

namespace {

// What a guard's acquire has taken so far, let go again if it throws before the grant.
struct GuardHold {
  Layout* m;
  bool fair = false;
  bool gate = false;
  explicit GuardHold(Layout* mapped) : m(mapped) {}
  GuardHold(const GuardHold&) = delete;
  GuardHold& operator=(const GuardHold&) = delete;
  ~GuardHold() {
    if (gate) sys::robust_mutex_unlock(&m->gate);
    if (fair) sys::robust_mutex_unlock(&m->fair_gate);
  }
};

[[noreturn, gnu::cold]] void throw_busy(const OpenFiles& files) {
  throw Error(files.target.path, "lock", "this LockFile already holds the lock (one grant at a time per LockFile)",
              exit_code::software);
}

[[noreturn, gnu::cold]] void throw_self_deadlock(const OpenFiles& files) {
  throw Error(files.target.path, "shm lock", "this thread already holds it; it would wait on itself forever",
              exit_code::software);
}

// The LockFile's mapping, opened (and validated) on its first grant.
[[gnu::noinline]] ShmMapping& open_guard_mapping(OpenFiles& files) {
  struct stat st {};
  sys::UniqueFd lock_fd = open_lock_path(files.target, st);
  files.shm = open_mapping(files.target, lock_fd.get(), st);
  return *files.shm;
}

// A lock of a gate that did not simply succeed: recovered from a dead owner (counted), or
// refused (this thread holds it), or broken (throws).
[[gnu::noinline]] void judge_guard_lock(const sys::MutexLock& r, const ShmMapping& mapping, const OpenFiles& files) {
  if (judge_outcome(r, mapping) == sys::MutexResult::self_deadlock) throw_self_deadlock(files);
}

[[gnu::noinline]] void guard_wait_for_readers(ShmMapping& mapping, const OpenFiles& files) {
  const auto r = wait_for_readers(mapping, WaitSpec{WaitSpec::forever, {}});
  if (r == sys::MutexResult::self_deadlock) throw_self_deadlock(files);  // a reader slot of this thread's
}

// The whole record (the slot holds another holder's, or none of this handle's yet).
[[gnu::noinline]] void guard_write_full(ShmMapping& mapping, OpenFiles& files, const LockOptions& options,
                                        uint64_t token, uint64_t nonce, int64_t acquired_unix_ns) {
  HolderRecord record = files.records.take(Backend::shm, LockMode::exclusive, options);
  record.token = token;
  record.nonce = nonce;
  record.acquired_unix_ns = acquired_unix_ns;
  write_slot(mapping, record);
  files.records.give_back(std::move(record), true);
}

}  // namespace

namespace {

// Holding the gate (and the fair gate when `fair_held`): everything a guard grant does after
// the gate, in every case (readers inside, a token epoch to start, a record to write in full,
// test hooks). Releases what it holds if it throws.
[[gnu::noinline, gnu::cold]] uint64_t guard_after_gate(OpenFiles& files, ShmMapping& mapping, const LockOptions& options,
                                            bool fair_held) {
  GuardHold hold(mapping.map);
  hold.gate = true;
  hold.fair = fair_held;
  stop_for_test(mapping.hook, "shm-gate-locked");
  if (mapping.map->readers.load(std::memory_order_acquire) != 0) guard_wait_for_readers(mapping, files);
  const uint64_t token = issue_token(mapping);
  const uint64_t nonce = token ^ mapping.nonce_key;
  const int64_t when = grant_time_ns(options.grant_time);
  if (!write_slot_head(mapping, token, nonce, when, 1, sys::current_pid())) {
    guard_write_full(mapping, files, options, token, nonce, when);
  }
  stop_for_test(mapping.hook, "shm-granted");
  hold.gate = false;
  hold.fair = false;
  files.busy = true;
  return token;
}

// A guard grant in every case: the LockFile's first (the mapping is opened), fair mode, test
// hooks, a LockFile already granting (refused).
[[gnu::noinline, gnu::cold]] uint64_t guard_acquire_slow(OpenFiles& files, const LockOptions& options) {
  if (files.busy) throw_busy(files);
  ShmMapping& mapping = files.shm ? *files.shm : open_guard_mapping(files);
  Layout* m = mapping.map;
  GuardHold hold(m);
  if (options.fair) {
    const auto r = sys::robust_mutex_lock(&m->fair_gate, false, nullptr);  // priority inheritance: glibc's
    if (r.result != sys::MutexResult::acquired) judge_guard_lock(r, mapping, files);
    hold.fair = true;
  }
  const auto r = sys::robust_mutex_lock_forever(&m->gate);
  if (r.result != sys::MutexResult::acquired) judge_guard_lock(r, mapping, files);
  hold.fair = false;  // guard_after_gate holds both now
  return guard_after_gate(files, mapping, options, options.fair);
}

// The gate was not simply taken: recovered from a dead owner (then held), or refused (throws,
// nothing held).
[[gnu::noinline, gnu::cold]] uint64_t guard_gate_outcome(OpenFiles& files, ShmMapping& mapping, const sys::MutexLock& r,
                                              const LockOptions& options) {
  judge_guard_lock(r, mapping, files);
  return guard_after_gate(files, mapping, options, false);
}

[[gnu::noinline, gnu::cold]] void guard_release_slow(OpenFiles& files, const LockOptions& options) noexcept {
  ShmMapping& mapping = *files.shm;
  stop_for_test(mapping.hook, "shm-release");
  // Not the owner (a forked child's copy of the guard): nothing is unlocked, and the fair gate
  // is not ours either.
  if (sys::robust_mutex_unlock_fast(&mapping.map->gate) != 0) return;
  if (options.fair) sys::robust_mutex_unlock_if_owner(&mapping.map->fair_gate);
}

}  // namespace

}  // namespace holdfast::lock_internal

namespace holdfast {

using lock_internal::guard_acquire_slow;
using lock_internal::guard_after_gate;
using lock_internal::guard_gate_outcome;
using lock_internal::guard_release_slow;
using lock_internal::kCounterMask;
using lock_internal::Layout;
using lock_internal::OpenFiles;
using lock_internal::RecordSlot;
using lock_internal::ShmMapping;

// The uncontended repeated grant inline: the gate (glibc's robust protocol, inline), then the
// token and the record slot's own fields, when the slot still holds this LockFile's last record
// and nothing unusual is pending; every other case goes to guard_acquire_slow/guard_after_gate.
LockFile::Guard::Guard(LockFile& file) : impl_(file.impl_.get()) {
  Impl& impl = *impl_;
  OpenFiles& files = *impl.files;
  ShmMapping* mapping = impl.guard_mapping;
  if (mapping == nullptr || files.busy) [[unlikely]] {
    if (!impl.guard_fast) {
      if (impl.guard_kernel && !files.busy &&
          lock_internal::kernel_guard_acquire(files.target, impl.backend, impl.options, files, token_)) {
        return;
      }
      lock_.emplace(file.acquire());
      token_ = lock_->token();
      return;
    }
    token_ = guard_acquire_slow(files, impl.options);
    if (!impl.options.fair && files.shm->hook.point.empty()) impl.guard_mapping = files.shm.get();
    return;
  }
  Layout* m = mapping->map;
  const sys::MutexLock r = sys::robust_mutex_lock_forever(&m->gate);
  if (r.result != sys::MutexResult::acquired) [[unlikely]] {
    token_ = guard_gate_outcome(files, *mapping, r, impl.options);
    return;
  }
  RecordSlot& slot = m->record;
  const uint64_t token = m->last_token.load(std::memory_order_relaxed) + 1;
  const uint64_t seq = slot.seq.load(std::memory_order_relaxed);
  if (m->readers.load(std::memory_order_acquire) != 0 || (token & kCounterMask) == 0 || seq != mapping->written_seq ||
      mapping->written_processes != 1 || mapping->written_pid != sys::robust_detail::t_state.pid) [[unlikely]] {
    token_ = guard_after_gate(files, *mapping, impl.options, false);
    return;
  }
  m->last_token.store(token, std::memory_order_relaxed);  // issued for good (issue_token)
  // The slot's own fields under its sequence counter (write_slot_head); seq is even here.
  slot.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  slot.token.store(token, std::memory_order_relaxed);
  slot.nonce.store(token ^ mapping->nonce_key, std::memory_order_relaxed);
  slot.acquired_unix_ns.store(lock_internal::grant_time_ns(impl.options.grant_time), std::memory_order_relaxed);
  slot.seq.store(seq + 2, std::memory_order_release);
  mapping->written_seq = seq + 2;
  files.busy = true;
  token_ = token;
}

LockFile::Guard::~Guard() {
  if (lock_) return;  // ~Lock releases
  Impl& impl = *impl_;
  OpenFiles& files = *impl.files;
  if (impl.guard_kernel) {
    lock_internal::kernel_guard_release(impl.backend, files);
    return;
  }
  files.busy = false;
  if (impl.guard_mapping == nullptr) [[unlikely]] {
    guard_release_slow(files, impl.options);
    return;
  }
  // Not the owner (a forked child's copy of the guard): nothing is unlocked.
  sys::robust_mutex_unlock_fast(&impl.guard_mapping->map->gate);
}

}  // namespace holdfast

namespace holdfast::lock_internal {

std::optional<ShmHolders> inspect_shm(int lock_fd, const struct stat& st) {
  std::string why;
  auto paths = side_state_for(lock_fd, st, &why);
  if (!paths) return std::nullopt;
  const std::string file = paths->fence.substr(0, paths->fence.size() - std::strlen(".fence")) + ".shm";
  sys::UniqueFd fd(sys::open_nothrow(AT_FDCWD, file, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return std::nullopt;
  struct stat fst {};
  if (sys::fstat_nothrow(fd.get(), fst) < 0 || fst.st_size != static_cast<off_t>(kMapSize)) return std::nullopt;
  void* p = ::mmap(nullptr, kMapSize, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return std::nullopt;
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, kMapSize); }
  } unmap{p};
  const auto* m = static_cast<const Layout*>(p);
  if (std::memcmp(m->magic, kMagic, sizeof kMagic) != 0 || m->version != kVersion) return std::nullopt;
  ShmHolders out;
  out.mapping = file;
  out.this_boot = field(m->boot_id) == this_boot_id();
  // Futex words from another boot name threads that are gone.
  if (out.this_boot) {
    const auto gate = sys::robust_mutex_owner(&m->gate);
    out.exclusive_held = gate.tid != 0 && !gate.owner_died;
    for (const auto& slot : m->reader) {
      const auto o = sys::robust_mutex_owner(&slot.mutex);
      if (o.tid != 0 && !o.owner_died) out.shared_pids.push_back(static_cast<pid_t>(slot.pid.load()));
    }
  }
  // The last exclusive record, if a consistent copy can be read.
  auto& r = const_cast<RecordSlot&>(m->record);  // NOLINT(cppcoreguidelines-pro-type-const-cast): atomics, read only
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const uint64_t seq = r.seq.load(std::memory_order_acquire);
    if (seq == 0) break;
    if (seq % 2 == 1) {
      ::sched_yield();
      continue;
    }
    HolderRecord rec;
    rec.backend = Backend::shm;
    rec.mode = LockMode::exclusive;
    rec.token = r.token.load(std::memory_order_relaxed);
    rec.nonce = r.nonce.load(std::memory_order_relaxed);
    rec.acquired_unix_ns = r.acquired_unix_ns.load(std::memory_order_relaxed);
    const size_t n = std::min<size_t>(r.processes.load(std::memory_order_relaxed), kRecordProcesses);
    for (size_t i = 0; i < n; ++i) {
      ProcessIdentity id;
      id.pid = static_cast<pid_t>(r.process[i].pid.load(std::memory_order_relaxed));
      id.start_time = r.process[i].start_time.load(std::memory_order_relaxed);
      id.pid_ns = r.process[i].pid_ns.load(std::memory_order_relaxed);
      id.time_ns = r.process[i].time_ns.load(std::memory_order_relaxed);
      id.boot_id = field(m->boot_id);
      id.host = field(m->host);
      id.machine_id = field(m->machine_id);
      rec.processes.push_back(std::move(id));
    }
    const size_t bytes = std::min<size_t>(r.command_bytes.load(std::memory_order_relaxed), kCommandBytes);
    char buf[kCommandBytes];
    for (size_t w = 0; w * 8 < bytes; ++w) {
      const uint64_t word = r.command[w].load(std::memory_order_relaxed);
      std::memcpy(buf + w * 8, &word, std::min<size_t>(8, bytes - w * 8));
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (r.seq.load(std::memory_order_relaxed) != seq) continue;
    size_t start = 0;
    for (size_t i = 0; i < bytes; ++i) {
      if (buf[i] == '\0') {
        rec.command.emplace_back(buf + start, i - start);
        start = i + 1;
      }
    }
    if (start < bytes) rec.command.emplace_back(buf + start, bytes - start);
    out.record = std::move(rec);
    break;
  }
  return out;
}

}  // namespace holdfast::lock_internal

namespace holdfast::lock_internal {

bool describe_shm(int lock_fd, const struct stat& st, HolderInfo& info) {
  auto shm = inspect_shm(lock_fd, st);
  if (!shm) return false;
  const bool held = shm->exclusive_held || !shm->shared_pids.empty();
  if (!held && (info.kernel_lock_held || read_side_record(lock_fd, st))) return false;  // not the lock in use
  info.backend = Backend::shm;
  info.record = shm->record;
  if (shm->exclusive_held) {
    info.state = HolderState::held;
    info.reason = "shm lock held exclusively (its futex word names a live owner)";
  } else if (held) {
    info.state = HolderState::held;
    std::string pids;
    for (pid_t p : shm->shared_pids) pids += (pids.empty() ? "" : ",") + std::to_string(p);
    info.reason = "shm lock held shared by pid " + pids;
    info.record.reset();  // the record is the last exclusive holder's, not the current holders'
  } else {
    info.state = HolderState::free;
    info.reason = shm->this_boot ? "no shm lock held; the record is the last holder's"
                                 : "shm mapping from a previous boot: nothing in it is held";
  }
  return true;
}

}  // namespace holdfast::lock_internal
