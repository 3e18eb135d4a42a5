// The barrier race harness: workers forked once, driven through phases by a command word in
// shared memory. The parent writes the command, bumps `seq` and wakes every waiter at once
// (FUTEX_WAKE to all); each worker acts and bumps `acks`, the last one waking the parent. A
// primitive round is two commands: prepare (drop the previous round's lock or temp file, make
// this round's) and go (try once, timed), so the only work between the release and the attempt is
// the wake-up itself. Phase::task runs a caller-supplied function in every worker at once (the
// probe --ensure race).
#include "probe/harness.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

#include "holdfast/error.hpp"
#include "sys/futex.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::probe_internal {

namespace {

}  // namespace

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

namespace {

constexpr size_t kControlBytes = (sizeof(Control) + 63) / 64 * 64;

uint64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// One worker process. Only syscalls and stack buffers after fork (the caller may be threaded).
[[noreturn]] void worker_main(Control* ctl, Slot* slot, int index, int workers, const char* scratch,
                              pid_t parent, const WorkerTask* task) {
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
      case Phase::task:
        // Not async-signal-safe (the task allocates): as the probe --ensure race always was.
        try {
          result = (task != nullptr && *task) ? (*task)(index, round) : 0;
        } catch (...) {
          result = 0;
        }
        break;
      case Phase::exit:
        ::_exit(0);
    }
    slot[index].result.store(result, std::memory_order_relaxed);
    if (ctl->acks.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<uint32_t>(workers)) {
      sys::futex_wake_all(ctl->acks);
    }
  }
}

}  // namespace

Harness::Harness(int workers, const std::string& scratch, WorkerTask task)
    : workers_(workers), scratch_(scratch), task_(std::move(task)) {
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
    if (pid == 0) worker_main(ctl_, slots_, i, workers, scratch_.c_str(), self, &task_);
    pids_.push_back(pid);
  }
}

Harness::~Harness() {
  stop();
  ::munmap(mem_, bytes_);
}

void Harness::command(Phase phase, Primitive prim, uint32_t round) {
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

int32_t Harness::result(int i) const { return slots_[i].result.load(std::memory_order_relaxed); }
uint32_t Harness::latency_ns(int i) const { return slots_[i].latency_ns.load(std::memory_order_relaxed); }

void Harness::stop() noexcept {
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

}  // namespace holdfast::probe_internal
