// holdfast::probe — the barrier race harness.
//
// Workers are forked once and driven through phases by a command word in shared memory: the
// parent writes the command, bumps `seq` and wakes every waiter at once (FUTEX_WAKE to all); each
// worker acts and bumps `acks`, the last one waking the parent. A round is two commands: prepare
// (drop the previous round's lock or temp file, make this round's) and go (try once, timed), so
// the only work between the release and the attempt is the wake-up itself.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"
#include "sys/futex.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast {

namespace {

enum class Phase : uint32_t { setup, prepare, go, cleanup, exit };

struct alignas(64) Slot {
  std::atomic<int32_t> result;       // 0 granted / done, else errno
  std::atomic<uint32_t> latency_ns;  // of the attempt in `go`
};

struct Control {
  alignas(64) std::atomic<uint32_t> seq;
  alignas(64) std::atomic<uint32_t> acks;
  std::atomic<uint32_t> phase;
  std::atomic<uint32_t> primitive;
  std::atomic<uint32_t> round;
};

constexpr size_t kControlBytes = (sizeof(Control) + 63) / 64 * 64;

uint64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// One worker process. Only syscalls and stack buffers after fork (the caller may be threaded).
[[noreturn]] void worker_main(Control* ctl, Slot* slot, int index, int workers, const char* scratch,
                              pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(0);
  uint32_t seen = 0;  // seq before the first command (a later load could miss it)
  int dirfd = -1;
  int lockfd = -1;
  char tmp[64] = "";
  char name[64] = "";
  for (;;) {
    uint32_t s;
    while ((s = ctl->seq.load(std::memory_order_acquire)) == seen) {
      if (sys::futex_wait(ctl->seq, seen, 1'000'000'000) == -ETIMEDOUT && ::getppid() != parent) {
        ::_exit(0);
      }
    }
    seen = s;
    auto phase = static_cast<Phase>(ctl->phase.load(std::memory_order_acquire));
    auto prim = static_cast<Primitive>(ctl->primitive.load(std::memory_order_relaxed));
    uint32_t round = ctl->round.load(std::memory_order_relaxed);
    int32_t result = 0;
    switch (phase) {
      case Phase::setup: {
        if (dirfd >= 0) ::close(dirfd);
        char path[4200];
        std::snprintf(path, sizeof path, "%s/%s", scratch, std::string_view(to_string(prim)).data());
        // A fresh directory may be invisible to us for a moment on a filesystem with a stale
        // view (faultfs nonatomic_create); wait up to 10 s before calling it an error.
        uint64_t deadline = now_ns() + 10'000'000'000ull;
        while ((dirfd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 && now_ns() < deadline) {
          ::usleep(1000);
        }
        result = dirfd < 0 ? errno : 0;
        tmp[0] = name[0] = '\0';
        break;
      }
      case Phase::prepare:
      case Phase::cleanup: {
        if (lockfd >= 0) ::close(lockfd);
        lockfd = -1;
        if (tmp[0] != '\0') ::unlinkat(dirfd, tmp, 0);
        tmp[0] = '\0';
        if (phase == Phase::cleanup) {
          if (dirfd >= 0) ::close(dirfd);
          dirfd = -1;
          break;
        }
        std::snprintf(name, sizeof name, "n%u", round);
        if (prim == Primitive::link || prim == Primitive::rename) {
          std::snprintf(tmp, sizeof tmp, "t%u.%d", round, index);
          int fd = ::openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (fd < 0) {
            result = errno;
            tmp[0] = '\0';
          } else {
            ::close(fd);
          }
        } else if (is_kernel_lock(prim)) {
          lockfd = ::openat(dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
          if (lockfd < 0) result = errno;
        }
        break;
      }
      case Phase::go: {
        int rc = -1;
        uint64_t t0 = now_ns();
        switch (prim) {
          case Primitive::mkdir: rc = ::mkdirat(dirfd, name, 0755); break;
          case Primitive::excl: {
            int fd = ::openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            rc = fd < 0 ? -1 : 0;
            if (fd >= 0) ::close(fd);
            break;
          }
          case Primitive::link: rc = ::linkat(dirfd, tmp, dirfd, name, 0); break;
          case Primitive::rename:
            rc = ::renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE);
            if (rc == 0) tmp[0] = '\0';
            break;
          case Primitive::flock:
          case Primitive::ofd:
          case Primitive::posix: {
            const auto kind = prim == Primitive::flock ? sys::KernelLockKind::flock
                              : prim == Primitive::ofd ? sys::KernelLockKind::ofd
                                                       : sys::KernelLockKind::posix;
            int lrc = sys::kernel_lock(lockfd, kind, true, false);
            rc = lrc == 0 ? 0 : -1;
            errno = -lrc;
            break;
          }
        }
        int err = errno;
        uint64_t t1 = now_ns();
        result = rc == 0 ? 0 : err;
        slot[index].latency_ns.store(static_cast<uint32_t>(std::min<uint64_t>(t1 - t0, UINT32_MAX)),
                                     std::memory_order_relaxed);
        break;
      }
      case Phase::exit:
        ::_exit(0);
    }
    slot[index].result.store(result, std::memory_order_relaxed);
    if (ctl->acks.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<uint32_t>(workers)) {
      sys::futex_wake_all(ctl->acks);
    }
  }
}

class Harness {
 public:
  Harness(int workers, const std::string& scratch) : workers_(workers), scratch_(scratch) {
    bytes_ = kControlBytes + sizeof(Slot) * static_cast<size_t>(workers);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw Error(errno, scratch, "probe: mmap shared memory");
    mem_ = p;
    ctl_ = new (p) Control{};
    slots_ = reinterpret_cast<Slot*>(static_cast<char*>(p) + kControlBytes);
    for (int i = 0; i < workers; ++i) new (&slots_[i]) Slot{};
    pid_t self = ::getpid();
    for (int i = 0; i < workers; ++i) {
      pid_t pid = ::fork();
      if (pid < 0) {
        int err = errno;
        stop();
        throw Error(err, scratch, "probe: fork worker");
      }
      if (pid == 0) worker_main(ctl_, slots_, i, workers, scratch_.c_str(), self);
      pids_.push_back(pid);
    }
  }
  ~Harness() {
    stop();
    ::munmap(mem_, bytes_);
  }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  // Sends one command to every worker and waits until all have done it.
  void command(Phase phase, Primitive prim, uint32_t round) {
    ctl_->acks.store(0, std::memory_order_relaxed);
    ctl_->phase.store(static_cast<uint32_t>(phase), std::memory_order_relaxed);
    ctl_->primitive.store(static_cast<uint32_t>(prim), std::memory_order_relaxed);
    ctl_->round.store(round, std::memory_order_relaxed);
    ctl_->seq.fetch_add(1, std::memory_order_acq_rel);
    sys::futex_wake_all(ctl_->seq);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      uint32_t a = ctl_->acks.load(std::memory_order_acquire);
      if (a == static_cast<uint32_t>(workers_)) return;
      if (sys::futex_wait(ctl_->acks, a, 200'000'000) == -ETIMEDOUT) {
        for (pid_t pid : pids_) {
          int status;
          if (::waitpid(pid, &status, WNOHANG) == pid) {
            pids_.erase(std::find(pids_.begin(), pids_.end(), pid));
            throw Error(scratch_, "probe", "worker " + std::to_string(pid) + " died", exit_code::software);
          }
        }
        if (std::chrono::steady_clock::now() > deadline) {
          throw Error(scratch_, "probe", "workers stopped responding for 60 s (hung filesystem?)",
                      exit_code::temp_fail);
        }
      }
    }
  }

  int32_t result(int i) const { return slots_[i].result.load(std::memory_order_relaxed); }
  uint32_t latency_ns(int i) const { return slots_[i].latency_ns.load(std::memory_order_relaxed); }
  int workers() const { return workers_; }

 private:
  void stop() noexcept {
    if (pids_.empty()) return;
    ctl_->phase.store(static_cast<uint32_t>(Phase::exit), std::memory_order_relaxed);
    ctl_->seq.fetch_add(1, std::memory_order_acq_rel);
    sys::futex_wake_all(ctl_->seq);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (pid_t pid : pids_) {
      int status;
      for (;;) {
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR)) break;
        if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pid, SIGKILL);  // stuck in a hung filesystem call
          ::waitpid(pid, &status, 0);
          break;
        }
        ::usleep(1000);
      }
    }
    pids_.clear();
  }

  int workers_;
  std::string scratch_;
  void* mem_ = nullptr;
  size_t bytes_ = 0;
  Control* ctl_ = nullptr;
  Slot* slots_ = nullptr;
  std::vector<pid_t> pids_;
};

std::string errno_text(Primitive p, int err) {
  return std::string(to_string(p)) + ": " + std::strerror(err);
}

double percentile_us(std::vector<uint32_t>& v, double q) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(std::llround(q * static_cast<double>(v.size() - 1))));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]) / 1000.0;
}

// Thrown between rounds when SIGINT, SIGTERM or SIGHUP is pending (blocked by StopSignals).
struct Interrupted {
  int signal;
};

// Blocks SIGINT, SIGTERM and SIGHUP in this thread while alive, so that an interrupted probe stops
// between rounds and removes its scratch tree (review P2); restores the mask on exit, so that a
// signal still pending is then delivered with its normal effect (the default kills the process).
class StopSignals {
 public:
  StopSignals() noexcept {
    sigset_t stop;
    sigemptyset(&stop);
    for (int sig : kSignals) sigaddset(&stop, sig);
    ::pthread_sigmask(SIG_BLOCK, &stop, &old_);
  }
  ~StopSignals() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // Throws Interrupted if one of the signals is pending (without consuming it).
  void check() const {
    sigset_t pending;
    if (::sigpending(&pending) != 0) return;
    for (int sig : kSignals) {
      // Pending only counts if the caller had not blocked it already: then it is the caller's.
      if (sigismember(&pending, sig) == 1 && sigismember(&old_, sig) != 1) throw Interrupted{sig};
    }
  }

 private:
  static constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
  sigset_t old_{};
};

// The scratch tree: removed on every path out of probe(), including an interruption.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& parent) {
    std::string templ = parent + "/.holdfast-probe.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw Error(errno, parent, "probe: create scratch directory");
    path_ = templ;
  }
  ~ScratchDir() { remove_tree(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

  // Removes a tree. Entries a stale-view filesystem still hides from us are retried.
  static void remove_tree(const std::string& path) noexcept {
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
      if (!ec && !std::filesystem::exists(path, ec)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

 private:
  std::string path_;
};

// Notes a failed attempt in `r`: resource errors make the run inconclusive, others unsafe.
void note_error(PrimitiveResult& r, const std::string& text, int err) {
  if (probe_internal::is_resource_errno(err)) {
    ++r.resource_errors;
  } else {
    ++r.errors;
  }
  if (r.first_error.empty()) r.first_error = text;
}

PrimitiveResult race(Harness& h, Primitive prim, const std::string& scratch, const ProbeOptions& options,
                     const StopSignals& stop) {
  PrimitiveResult r;
  r.primitive = prim;
  std::string dir = scratch + "/" + std::string(to_string(prim));
  if (::mkdir(dir.c_str(), 0755) != 0) throw Error(errno, dir, "probe: mkdir");
  sys::UniqueFd dirfd(sys::open_nothrow(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY));
  if (!dirfd) throw Error(-dirfd.get(), dir, "probe: open");
  h.command(Phase::setup, prim, 0);
  for (int i = 0; i < h.workers(); ++i) {
    if (int err = h.result(i); err != 0) throw Error(err, dir, "probe: worker open");
  }
  std::vector<uint32_t> latencies;
  latencies.reserve(static_cast<size_t>(options.rounds) * static_cast<size_t>(h.workers()));
  int unsupported = 0;
  for (int round = 0; round < options.rounds; ++round) {
    stop.check();
    auto rn = static_cast<uint32_t>(round);
    h.command(Phase::prepare, prim, rn);
    bool prepared = true;
    for (int i = 0; i < h.workers(); ++i) {
      if (int err = h.result(i); err != 0) {
        prepared = false;
        note_error(r, "prepare " + errno_text(prim, err), err);
      }
    }
    if (!prepared) break;
    h.command(Phase::go, prim, rn);
    int winners = 0;
    for (int i = 0; i < h.workers(); ++i) {
      int err = h.result(i);
      latencies.push_back(h.latency_ns(i));
      if (err == 0) {
        ++winners;
      } else if (probe_internal::is_loser_errno(prim, err)) {
      } else if (probe_internal::is_unsupported_errno(err)) {
        ++unsupported;
        if (r.first_error.empty()) r.first_error = errno_text(prim, err);
      } else {
        note_error(r, errno_text(prim, err), err);
      }
    }
    // The round's name goes now, not at the end: 500 rounds x 7 primitives of leftovers would
    // fill a small filesystem and turn "full" into a verdict (review P1). Lock winners keep
    // their descriptors until the next prepare; unlinking under them is harmless.
    char name[32];
    std::snprintf(name, sizeof name, "n%u", rn);
    ::unlinkat(dirfd.get(), name, prim == Primitive::mkdir ? AT_REMOVEDIR : 0);
    r.rounds = round + 1;
    if (winners > 1) ++r.double_grants;
    if (winners == 0) ++r.no_winner_rounds;
    r.max_winners = std::max(r.max_winners, winners);
    if (options.progress) options.progress(ProbeProgress{prim, round + 1, options.rounds, r.double_grants});
    if (round == 0 && unsupported == h.workers()) break;  // refused outright: no point going on
  }
  h.command(Phase::cleanup, prim, 0);
  dirfd.reset();
  ScratchDir::remove_tree(dir);
  r.median_us = percentile_us(latencies, 0.5);
  r.p99_us = percentile_us(latencies, 0.99);

  const std::string scale = std::to_string(r.rounds) + " rounds x " + std::to_string(h.workers()) + " workers";
  if (r.double_grants > 0) {
    // Proof, whatever else happened.
    r.verdict = Verdict::unsafe;
    r.reason = std::to_string(r.double_grants) + " of " + std::to_string(r.rounds) +
               " rounds granted it to several workers (up to " + std::to_string(r.max_winners) + ")";
  } else if (unsupported > 0 && r.max_winners == 0) {
    r.verdict = Verdict::unsupported;
    r.reason = "refused: " + r.first_error;
  } else if (r.errors > 0 || unsupported > 0) {
    r.verdict = Verdict::unsafe;
    r.reason = std::to_string(r.errors + unsupported) + " unexpected failures, first: " + r.first_error;
  } else if (r.resource_errors > 0) {
    r.verdict = Verdict::inconclusive;
    r.reason = "stopped after " + std::to_string(r.rounds) + " of " + std::to_string(options.rounds) +
               " rounds without a double grant: " + r.first_error;
  } else {
    r.verdict = Verdict::safe;
    r.reason = "one winner in every round of " + scale;
    if (r.no_winner_rounds > 0) {
      r.reason += "; but " + std::to_string(r.no_winner_rounds) + " rounds had no winner";
    }
  }
  return r;
}

// A primitive that could not even be set up (its directory, or the workers' descriptors).
PrimitiveResult setup_failure(Primitive prim, const Error& e) {
  PrimitiveResult r;
  r.primitive = prim;
  r.first_error = e.what();
  if (probe_internal::is_resource_errno(e.error_number())) {
    r.resource_errors = 1;
    r.verdict = Verdict::inconclusive;
  } else {
    r.errors = 1;
    r.verdict = Verdict::unsafe;
  }
  r.reason = std::string("not measured: ") + e.what();
  return r;
}

void apply_semantics(PrimitiveResult& r, const std::string& scratch) {
  std::string error;
  int error_number = 0;
  r.semantics = probe_internal::check_semantics(r.primitive, scratch, error, error_number);
  if (r.verdict == Verdict::unsupported) return;
  std::string problem = probe_internal::semantics_problem(r.primitive, *r.semantics);
  if (problem.empty() && !error.empty()) {
    if (probe_internal::is_resource_errno(error_number)) {
      if (r.verdict == Verdict::safe) {
        r.verdict = Verdict::inconclusive;
        r.reason = "semantics not measured: " + error + "; " + r.reason;
      }
      return;
    }
    problem = error;
  }
  if (!problem.empty()) {
    r.verdict = Verdict::unsafe;
    r.reason = problem + (r.double_grants > 0 ? "; " + r.reason : "");
  }
}

// Races every primitive in a scratch tree under options.directory, appending to report.results.
void measure(ProbeReport& report, const ProbeOptions& options) {
  // Destroyed in reverse order: workers stopped, scratch tree removed, then the signal mask
  // restored, so that a pending SIGTERM is delivered only once nothing is left behind.
  const StopSignals stop;
  const ScratchDir scratch_dir(options.directory);
  const std::string& scratch = scratch_dir.path();
  // A directory just made may be hidden from other processes on a stale-view filesystem; the
  // workers wait for their own directories, so nothing else to do here.
  const auto& prims = options.primitives.empty() ? all_primitives() : options.primitives;
  try {
    Harness harness(options.workers, scratch);
    for (Primitive p : prims) {
      stop.check();
      PrimitiveResult r;
      try {
        r = race(harness, p, scratch, options, stop);
      } catch (const Error& e) {
        // A syscall failed setting this primitive up: report it and measure the others. (The
        // harness's own failures carry no errno and end the probe.)
        if (e.error_number() == 0) throw;
        r = setup_failure(p, e);
      }
      if (options.semantics && is_kernel_lock(p) && r.verdict != Verdict::inconclusive) apply_semantics(r, scratch);
      report.results.push_back(std::move(r));
    }
  } catch (const Interrupted& i) {
    throw Error(options.directory, "probe",
                std::string("interrupted by ") + ::sigabbrev_np(i.signal) + "; scratch directory removed",
                128 + i.signal);
  }
}

}  // namespace

const PrimitiveResult* ProbeReport::find(Primitive primitive) const noexcept {
  for (const auto& r : results) {
    if (r.primitive == primitive) return &r;
  }
  return nullptr;
}

ProbeReport probe(const ProbeOptions& options) {
  if (options.workers < 2) throw Error(options.directory, "probe", "need at least 2 workers", exit_code::usage);
  if (options.rounds < 1) throw Error(options.directory, "probe", "need at least 1 round", exit_code::usage);
  auto started = std::chrono::steady_clock::now();
  ProbeReport report;
  report.directory = options.directory;
  report.workers = options.workers;
  report.rounds = options.rounds;
  struct stat st{};
  if (int rc = sys::stat_nothrow(options.directory, st); rc != 0) throw Error(-rc, options.directory, "probe");
  if (!S_ISDIR(st.st_mode)) throw Error(ENOTDIR, options.directory, "probe");
  report.filesystem = filesystem_info(options.directory);

  measure(report, options);

  // Remembered for the mount first, so that select_backend (here and in every later process)
  // decides with what was just measured.
  probe_internal::remember_probe_report(report);
  try {
    auto choice = select_backend(options.directory);
    report.automatic_backend = choice.backend;
    report.automatic_reason = choice.reason;
  } catch (const std::exception& e) {
    report.automatic_backend = Backend::automatic;  // refuses: no backend it can verify is safe
    report.automatic_reason = e.what();
  }
  // Unknown (nullopt) when a primitive behind the choice was not probed or was inconclusive.
  auto measured = [&](Primitive p) -> std::optional<bool> {
    const auto* r = report.find(p);
    if (r == nullptr || r->verdict == Verdict::inconclusive) return std::nullopt;
    return r->verdict == Verdict::safe;
  };
  switch (report.automatic_backend) {
    case Backend::automatic: report.automatic_safe.reset(); break;
    case Backend::ofd: report.automatic_safe = measured(Primitive::ofd); break;
    case Backend::flock: report.automatic_safe = measured(Primitive::flock); break;
    case Backend::link: report.automatic_safe = measured(Primitive::link); break;
    case Backend::excl: {
      // excl uses RENAME_NOREPLACE, and O_CREAT|O_EXCL only where renameat2 is refused.
      const auto* rn = report.find(Primitive::rename);
      if (rn != nullptr && rn->verdict == Verdict::unsupported) {
        report.automatic_safe = measured(Primitive::excl);
      } else {
        auto a = measured(Primitive::rename);
        auto b = measured(Primitive::excl);
        if (a == false || b == false) {
          report.automatic_safe = false;
        } else if (a && b) {
          report.automatic_safe = true;
        } else {
          report.automatic_safe.reset();
        }
      }
      break;
    }
  }
  report.recommended = recommended_backend(report);
  report.elapsed_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

}  // namespace holdfast
