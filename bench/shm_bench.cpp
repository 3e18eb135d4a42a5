// The shm backend against pthread mutexes in a shared mapping, in the same run.
//
//   holdfast_shm_bench [Google Benchmark flags]
//       uncontended lock+unlock, one process:
//         pthread    pthread_mutex (PTHREAD_PROCESS_SHARED) in a MAP_SHARED mapping: the goal's baseline
//         robust     the same, robust and error-checking (what the shm backend builds on)
//         robust_inline  that mutex through sys::robust_mutex_lock_forever/unlock_fast (glibc's
//                    protocol inline, as the shm gate is taken)
//         shm        LockFile(shm) acquire()+release(): holder record + fencing token included
//         shm_fair   the same with LockOptions::fair
//         shm_shared the same in shared mode
//         shm_none   shm with LockOptions::grant_time = none (no clock read per grant)
//         guard      LockFile::Guard (the scoped fast path): token + record, precise grant time
//         guard_coarse  the same, grant time from CLOCK_REALTIME_COARSE
//         guard_none    the same, no grant time (acquired_unix_ns 0)
//         clock      clock_gettime(CLOCK_REALTIME) alone, and clock_coarse (_COARSE): what the
//                    grant time costs, beside the lock
//   holdfast_shm_bench loop VARIANT ITERATIONS
//       just the loop, for callgrind (instructions per operation, independent of load)
//   holdfast_shm_bench contended VARIANT PROCS SECONDS
//       PROCS processes lock+unlock with zero hold time for SECONDS; prints one JSON line:
//       grants/s, handoffs/s (grants whose previous holder was another process), and the wait
//       of every acquisition (p50/p99/max ns). VARIANT: pthread, robust, shm, shm_fair, flock.
//
// Environment: HOLDFAST_SHM_BENCH_DIR (default /dev/shm) for lock files; the state directory
// is HOLDFAST_STATE_DIR as usual (bench/70-shm.sh points it at a temp dir).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "holdfast/lock.hpp"
#include "sys/robust_mutex.hpp"

namespace {

using holdfast::Backend;
using holdfast::Lock;
using holdfast::LockFile;
using holdfast::LockMode;
using holdfast::LockOptions;

std::string lock_dir() {
  const char* d = std::getenv("HOLDFAST_SHM_BENCH_DIR");
  return d != nullptr && *d != '\0' ? d : "/dev/shm";
}

void* shared_map(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap");
  return p;
}

pthread_mutex_t* make_mutex(bool robust) {
  auto* m = static_cast<pthread_mutex_t*>(shared_map(4096));
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (robust) {
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
  }
  pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  return m;
}

LockOptions shm_options(const std::string& variant) {
  LockOptions o;
  o.backend = Backend::shm;
  o.fair = variant == "shm_fair";
  o.mode = variant == "shm_shared" ? LockMode::shared : LockMode::exclusive;
  if (variant == "shm_none" || variant == "guard_none") o.grant_time = holdfast::GrantTime::none;
  if (variant == "guard_coarse") o.grant_time = holdfast::GrantTime::coarse;
  return o;
}

bool is_guard(const std::string& v) { return v.rfind("guard", 0) == 0; }
bool is_shm(const std::string& v) { return v.rfind("shm", 0) == 0 || is_guard(v); }

// One variant's lock+unlock, bound to its lock: for the uncontended loop and the contended run.
class Locker {
 public:
  Locker(const std::string& variant, const std::string& path, pthread_mutex_t* m) : m_(m) {
    if (is_shm(variant)) {
      lf_.emplace(LockFile::open(path, shm_options(variant)));
      kind_ = is_guard(variant) ? Kind::guard : Kind::lock;
    } else if (variant == "clock" || variant == "clock_coarse") {
      kind_ = Kind::clock;
      clock_ = variant == "clock" ? CLOCK_REALTIME : CLOCK_REALTIME_COARSE;
    } else if (variant == "robust_inline") {
      kind_ = Kind::robust_inline;
    } else if (variant == "flock") {
      kind_ = Kind::flock;
      fd_ = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    }
  }
  ~Locker() {
    if (fd_ >= 0) ::close(fd_);
  }
  Locker(const Locker&) = delete;
  Locker& operator=(const Locker&) = delete;
  // Locks, runs `inside`, unlocks. One switch, decided at construction: every variant pays the
  // same few instructions of dispatch, pthread included.
  template <typename F>
  void once(F&& inside) {
    switch (kind_) {
      case Kind::pthread: {
        pthread_mutex_lock(m_);
        inside();
        pthread_mutex_unlock(m_);
        break;
      }
      case Kind::robust_inline: {
        holdfast::sys::robust_mutex_lock_forever(m_);
        inside();
        holdfast::sys::robust_mutex_unlock_fast(m_);
        break;
      }
      case Kind::guard: {
        LockFile::Guard g(*lf_);
        inside();
        benchmark::DoNotOptimize(g.token());
        break;
      }
      case Kind::lock: {
        Lock l = lf_->acquire();
        inside();
        benchmark::DoNotOptimize(l.token());
        break;
      }
      case Kind::clock: {
        timespec ts{};
        ::clock_gettime(clock_, &ts);
        inside();
        benchmark::DoNotOptimize(ts);
        break;
      }
      case Kind::flock: {
        ::flock(fd_, LOCK_EX);
        inside();
        ::flock(fd_, LOCK_UN);
        break;
      }
    }
  }

 private:
  // pthread: pthread_mutex_lock/unlock on m_ (plain or robust, as made).
  enum class Kind { pthread, robust_inline, guard, lock, clock, flock };
  Kind kind_ = Kind::pthread;
  pthread_mutex_t* m_;
  std::optional<LockFile> lf_;
  clockid_t clock_ = CLOCK_REALTIME;
  int fd_ = -1;
};

std::string fresh_path(const std::string& tag) {
  return lock_dir() + "/holdfast-shm-bench-" + tag + "-" + std::to_string(::getpid());
}

void uncontended(benchmark::State& state, const std::string& variant) {
  const std::string path = fresh_path(variant);
  pthread_mutex_t* m = variant == "pthread" || variant.rfind("robust", 0) == 0 ? make_mutex(variant != "pthread") : nullptr;
  {
    Locker locker(variant, path, m);
    for (auto _ : state) locker.once([] {});
  }
  ::unlink(path.c_str());
}

struct Shared {
  std::atomic<int> go;
  std::atomic<int> stop;
  std::atomic<int32_t> last_owner;
  std::atomic<uint64_t> grants;
  std::atomic<uint64_t> handoffs;
  std::atomic<uint64_t> samples;
};

int contended(const std::string& variant, int procs, double seconds) {
  const std::string path = fresh_path("contended-" + variant);
  pthread_mutex_t* m = variant == "pthread" || variant.rfind("robust", 0) == 0 ? make_mutex(variant != "pthread") : nullptr;
  auto* sh = new (shared_map(sizeof(Shared))) Shared{};
  constexpr size_t kMaxSamples = 4'000'000;
  auto* waits = static_cast<uint32_t*>(shared_map(kMaxSamples * sizeof(uint32_t)));
  if (is_shm(variant)) LockFile::open(path, shm_options(variant)).acquire();  // initialise the mapping once
  std::vector<pid_t> kids;
  for (int p = 0; p < procs; ++p) {
    pid_t pid = ::fork();
    if (pid == 0) {
      Locker locker(variant, path, m);
      const auto me = static_cast<int32_t>(::getpid());
      uint64_t grants = 0, handoffs = 0;
      while (sh->go.load() == 0) ::sched_yield();
      while (sh->stop.load() == 0) {
        const auto t0 = std::chrono::steady_clock::now();
        std::chrono::steady_clock::time_point t1;
        locker.once([&] {
          t1 = std::chrono::steady_clock::now();
          if (sh->last_owner.exchange(me, std::memory_order_relaxed) != me) ++handoffs;
        });
        ++grants;
        const uint64_t slot = sh->samples.fetch_add(1, std::memory_order_relaxed);
        if (slot < kMaxSamples) {
          waits[slot] = static_cast<uint32_t>(
              std::min<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), UINT32_MAX));
        }
      }
      sh->grants.fetch_add(grants);
      sh->handoffs.fetch_add(handoffs);
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  const auto start = std::chrono::steady_clock::now();
  sh->go.store(1);
  ::usleep(static_cast<useconds_t>(seconds * 1e6));
  sh->stop.store(1);
  for (pid_t k : kids) ::waitpid(k, nullptr, 0);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t n = std::min<uint64_t>(sh->samples.load(), kMaxSamples);
  std::vector<uint32_t> w(waits, waits + n);
  std::sort(w.begin(), w.end());
  auto pct = [&](double p) { return n == 0 ? 0U : w[std::min(n - 1, static_cast<size_t>(p * static_cast<double>(n)))]; };
  std::printf("{\"variant\":\"%s\",\"procs\":%d,\"seconds\":%.3f,\"grants_per_s\":%.0f,\"handoffs_per_s\":%.0f,"
              "\"wait_p50_ns\":%u,\"wait_p99_ns\":%u,\"wait_max_ns\":%u,\"samples\":%zu}\n",
              variant.c_str(), procs, elapsed, static_cast<double>(sh->grants.load()) / elapsed,
              static_cast<double>(sh->handoffs.load()) / elapsed, pct(0.5), pct(0.99), n == 0 ? 0U : w.back(), n);
  ::unlink(path.c_str());
  return 0;
}

int loop(const std::string& variant, long iterations) {
  const std::string path = fresh_path("loop-" + variant);
  pthread_mutex_t* m = variant == "pthread" || variant.rfind("robust", 0) == 0 ? make_mutex(variant != "pthread") : nullptr;
  {
    Locker locker(variant, path, m);
    for (long i = 0; i < iterations; ++i) locker.once([] {});
  }
  ::unlink(path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 4 && std::string(argv[1]) == "loop") return loop(argv[2], std::atol(argv[3]));
    if (argc == 5 && std::string(argv[1]) == "contended") {
      return contended(argv[2], std::atoi(argv[3]), std::atof(argv[4]));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "holdfast_shm_bench: %s\n", e.what());
    return 1;
  }
  for (const char* v : {"pthread", "robust", "robust_inline", "shm", "shm_fair", "shm_shared", "shm_none", "guard", "guard_coarse",
                        "guard_none", "clock", "clock_coarse"}) {
    benchmark::RegisterBenchmark((std::string("uncontended/") + v).c_str(), uncontended, std::string(v));
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
