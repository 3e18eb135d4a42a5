// Locks under contention, per backend (run by bench/20-contention.sh; not a unit test):
//
//   holdfast_contention_bench recovery DIR BACKEND ROUNDS
//     A holder process takes the lock and stops; a waiter process blocks in acquire(); the
//     holder is SIGKILLed. Reports, per round, the time from the kill(2) call to the waiter's
//     grant (CLOCK_MONOTONIC in both processes): one JSON line with the latencies in µs.
//     BACKEND bare-ofd / bare-flock: the same with the kernel primitive alone (an OFD lock or
//     flock(2) on a descriptor) in holder and waiter; ofd/bare-waiter, flock/bare-waiter: a
//     holdfast holder and a bare waiter, the floor for that holder (its exit is most of it).
//   holdfast_contention_bench fairness DIR BACKEND PROCESSES SECONDS
//     PROCESSES processes loop acquire + release (zero hold time) through one LockFile each for
//     SECONDS. Reports handoffs/s (grants per second, all processes) and the wait of every
//     acquire() (call to grant): p50, p99, max, and the grants of the least and most served
//     process, as one JSON line.
//
// Benchmarks may sleep: the waiter is given 20 ms to block before the kill (the figure is from
// the kill, so the sleep is not in it).
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/lock.hpp"

namespace {

using holdfast::Backend;
using holdfast::LockFile;
using holdfast::LockOptions;

int64_t now_ns() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "contention_bench: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

void sleep_ms(int ms) {
  struct timespec ts {ms / 1000, static_cast<long>(ms % 1000) * 1000000};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Shared between the processes of one run (an anonymous shared mapping).
struct Shared {
  std::atomic<int> ready{0};
  std::atomic<int> go{0};
  std::atomic<int64_t> granted_ns{0};
  std::atomic<int64_t> stop_ns{0};
};

Shared* map_shared(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap");
  return new (p) Shared();
}

double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// How one process of a recovery round takes the lock: holdfast's LockFile, or the bare kernel
// primitive (an OFD lock or flock(2) on a descriptor), so that both are measured from forks of
// the same process, whose exit (address space first, descriptors after) is the same.
class Locker {
 public:
  virtual ~Locker() = default;
  virtual void open(const std::string& path) = 0;
  virtual void acquire() = 0;  // blocks until granted
};

class HoldfastLocker final : public Locker {
 public:
  explicit HoldfastLocker(Backend backend) : backend_(backend) {}
  void open(const std::string& path) override { file_.emplace(LockFile::open(path, LockOptions{backend_})); }
  void acquire() override { lock_.emplace(file_->acquire()); }

 private:
  Backend backend_;
  std::optional<LockFile> file_;
  std::optional<holdfast::Lock> lock_;
};

class BareLocker final : public Locker {
 public:
  explicit BareLocker(bool ofd) : ofd_(ofd) {}
  ~BareLocker() override {
    if (fd_ >= 0) ::close(fd_);
  }
  BareLocker(const BareLocker&) = delete;
  BareLocker& operator=(const BareLocker&) = delete;
  void open(const std::string& path) override {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("open " + path);
  }
  void acquire() override {
    if (ofd_) {
      struct flock fl {};
      fl.l_type = F_WRLCK;
      fl.l_whence = SEEK_SET;
      while (::fcntl(fd_, F_OFD_SETLKW, &fl) != 0)
        if (errno != EINTR) fail("F_OFD_SETLKW");
    } else {
      while (::flock(fd_, LOCK_EX) != 0)
        if (errno != EINTR) fail("flock");
    }
  }

 private:
  bool ofd_;
  int fd_ = -1;
};

using MakeLocker = std::function<std::unique_ptr<Locker>()>;

// `holder` takes the lock and is SIGKILLed; `waiter` is blocked waiting and is timed.
int recovery(const std::string& dir, const std::string& name, const MakeLocker& holder_locker,
             const MakeLocker& waiter_locker, int rounds) {
  std::vector<double> us;
  for (int r = 0; r < rounds; ++r) {
    std::string file = name;
    std::replace(file.begin(), file.end(), '/', '-');
    const std::string path = dir + "/recovery-" + file + ".lock";
    Shared* sh = map_shared(sizeof(Shared));
    const pid_t holder = ::fork();
    if (holder < 0) fail("fork");
    if (holder == 0) {
      auto l = holder_locker();
      l->open(path);
      l->acquire();
      sh->ready.store(1);
      for (;;) ::pause();
    }
    while (sh->ready.load() == 0) sleep_ms(1);
    const pid_t waiter = ::fork();
    if (waiter < 0) fail("fork");
    if (waiter == 0) {
      auto l = waiter_locker();
      l->open(path);
      sh->ready.store(2);
      l->acquire();
      sh->granted_ns.store(now_ns());
      ::_exit(0);
    }
    while (sh->ready.load() != 2) sleep_ms(1);
    sleep_ms(20);  // let the waiter block (a dotlock waiter: judge the live holder, then sleep)
    const int64_t killed = now_ns();
    ::kill(holder, SIGKILL);
    int status = 0;
    ::waitpid(waiter, &status, 0);
    ::waitpid(holder, nullptr, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "contention_bench: waiter failed\n");
      return 1;
    }
    us.push_back(static_cast<double>(sh->granted_ns.load() - killed) / 1000.0);
    ::munmap(sh, sizeof(Shared));
  }
  const double p50 = percentile(us, 0.5), p90 = percentile(us, 0.9), max = us.empty() ? 0.0 : us.back();
  std::printf("{\"mode\":\"recovery\",\"backend\":\"%s\",\"rounds\":%d,\"p50_us\":%.1f,\"p90_us\":%.1f,\"max_us\":%.1f}\n",
              name.c_str(), rounds, p50, p90, max);
  return 0;
}

int fairness(const std::string& dir, Backend backend, int procs, double seconds) {
  // Per process: its grant count and its waits (µs), in the shared mapping after the header.
  constexpr size_t kMaxWaits = 1 << 20;
  const size_t per_proc = sizeof(int64_t) + kMaxWaits * sizeof(float);
  const size_t bytes = sizeof(Shared) + static_cast<size_t>(procs) * per_proc;
  Shared* sh = map_shared(bytes);
  auto slot = [&](int i) { return reinterpret_cast<char*>(sh) + sizeof(Shared) + static_cast<size_t>(i) * per_proc; };
  const std::string path = dir + "/fairness-" + std::string(to_string(backend)) + ".lock";
  std::vector<pid_t> kids;
  for (int i = 0; i < procs; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
      auto lf = LockFile::open(path, LockOptions{backend});
      auto* count = reinterpret_cast<int64_t*>(slot(i));
      auto* waits = reinterpret_cast<float*>(slot(i) + sizeof(int64_t));
      sh->ready.fetch_add(1);
      while (sh->go.load() == 0) {
      }
      const int64_t stop = sh->stop_ns.load();
      int64_t n = 0;
      for (;;) {
        const int64_t t0 = now_ns();
        if (t0 >= stop) break;
        auto l = lf.acquire();
        const int64_t t1 = now_ns();
        l.release();
        if (static_cast<size_t>(n) < kMaxWaits) waits[n] = static_cast<float>(t1 - t0) / 1000.0F;
        ++n;
      }
      *count = n;
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  while (sh->ready.load() != procs) sleep_ms(1);
  const int64_t start = now_ns();
  sh->stop_ns.store(start + static_cast<int64_t>(seconds * 1e9));
  sh->go.store(1);
  for (pid_t k : kids) ::waitpid(k, nullptr, 0);
  const double elapsed = static_cast<double>(now_ns() - start) / 1e9;
  std::vector<double> waits;
  int64_t total = 0, least = INT64_MAX, most = 0;
  for (int i = 0; i < procs; ++i) {
    const int64_t n = *reinterpret_cast<int64_t*>(slot(i));
    const auto* w = reinterpret_cast<const float*>(slot(i) + sizeof(int64_t));
    total += n;
    least = std::min(least, n);
    most = std::max(most, n);
    for (int64_t k = 0; k < std::min<int64_t>(n, kMaxWaits); ++k) waits.push_back(w[k]);
  }
  const double p50 = percentile(waits, 0.5), p99 = percentile(waits, 0.99), max = waits.empty() ? 0.0 : waits.back();
  std::printf("{\"mode\":\"fairness\",\"backend\":\"%s\",\"processes\":%d,\"seconds\":%.2f,\"handoffs_per_s\":%.0f,"
              "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"least_grants\":%lld,\"most_grants\":%lld}\n",
              std::string(to_string(backend)).c_str(), procs, elapsed, static_cast<double>(total) / elapsed,
              p50, p99, max,
              static_cast<long long>(least), static_cast<long long>(most));
  ::munmap(sh, bytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s recovery DIR BACKEND|bare-ofd|bare-flock|ofd/bare-waiter|flock/bare-waiter ROUNDS | fairness DIR BACKEND PROCESSES SECONDS\n", argv[0]);
    return 64;
  }
  const std::string mode = argv[1];
  const std::string which = argv[3];
  if (mode == "recovery" && (which == "bare-ofd" || which == "bare-flock")) {
    const MakeLocker bare = [&] { return std::make_unique<BareLocker>(which == "bare-ofd"); };
    return recovery(argv[2], which, bare, bare, std::atoi(argv[4]));
  }
  if (mode == "recovery" && (which == "ofd/bare-waiter" || which == "flock/bare-waiter")) {
    const bool ofd = which == "ofd/bare-waiter";
    const MakeLocker holder = [&] { return std::make_unique<HoldfastLocker>(ofd ? Backend::ofd : Backend::flock); };
    const MakeLocker waiter = [&] { return std::make_unique<BareLocker>(ofd); };
    return recovery(argv[2], which, holder, waiter, std::atoi(argv[4]));
  }
  auto backend = holdfast::parse_backend(argv[3]);
  if (!backend) {
    std::fprintf(stderr, "unknown backend %s\n", argv[3]);
    return 64;
  }
  try {
    if (mode == "recovery") {
      const MakeLocker locker = [&] { return std::make_unique<HoldfastLocker>(*backend); };
      return recovery(argv[2], std::string(to_string(*backend)), locker, locker, std::atoi(argv[4]));
    }
    if (mode == "fairness" && argc >= 6) return fairness(argv[2], *backend, std::atoi(argv[4]), std::atof(argv[5]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "contention_bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 64;
}
