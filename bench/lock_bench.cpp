// Lock acquisition cost: holdfast against the syscalls it cannot avoid, in the same run.
//
// For every backend and filesystem (tmpfs and disk) this registers, side by side:
//   <fs>:<backend>:handle    LockFile::open once, then acquire + release per iteration
//   <fs>:<backend>:syscalls  a hand-written loop of exactly the syscalls strace shows the handle
//                            loop making per acquisition (same fds kept open, same byte counts,
//                            the fencing counter really incremented), with no other work
//   <fs>:<backend>:bare      the bare primitive: OFD lock+unlock / flock LOCK_EX+LOCK_UN on an open
//                            fd; for dotlocks open(O_EXCL)+close+unlink / link+unlink
//   <fs>:<backend>:path      Lock::acquire(path) + release (opens lock and fence files each time)
//   <fs>:<backend>:guard     LockFile::open once, then a LockFile::Guard per iteration
//   <fs>:<backend>:paired    the handle and the syscalls loop in alternating batches on one lock
//                            file; counter handle_over_mirror is the median of the batch pairs'
//                            ratios (robust to the machine's speed drifting between benchmarks)
//   <fs>:<backend>:paired_guard  the same with a Guard per iteration instead of a Lock
// bench/10-lock.sh turns the JSON output into ratios. Keep the syscalls loops in step with
// src/lock: `bash bench/10-lock.sh` prints holdfast's and the mirror's syscalls per operation
// (under strace, when installed) so a drift shows up as a mismatch.
//
// Environment:
//   HOLDFAST_LOCK_BENCH_DIRS   fs=dir pairs, comma-separated (default tmpfs=/dev/shm,disk=/var/tmp)
//   HOLDFAST_LOCK_BENCH_ITERS  fixed iteration count for every benchmark (for strace counting)
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "holdfast/lock.hpp"

namespace {

using holdfast::Backend;
using holdfast::Lock;
using holdfast::LockFile;
using holdfast::LockOptions;

[[noreturn]] void die(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

// The loops call this with literals: the message becomes a std::string only on failure, so a
// check costs the mirror a compare, not a string (an 18-byte one was a malloc per iteration).
void check(bool ok, const char* what) {
  if (!ok) die(what);
}
void check(bool ok, const std::string& what) {
  if (!ok) die(what);
}

std::string read_all(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check(fd >= 0, "open " + path);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// Lowercase hex of `v` into 16 chars at `out` (what the dotlock code formats its names with).
void hex16(uint64_t v, char* out) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 15; i >= 0; --i) {
    out[i] = digits[v & 0xf];
    v >>= 4;
  }
}

uint64_t random_u64() {
  uint64_t v = 0;
  check(::getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v), "getrandom");
  return v;
}

// The fence file's counter line "C <16 hex epoch> <8 hex counter>" lives at offset 96, 32 bytes.
// The mirror increments it in place, like FenceFile::next does on the same boot.
constexpr size_t kFenceRead = 128;
constexpr size_t kCounterOffset = 96;
constexpr size_t kCounterSize = 32;
constexpr size_t kCounterDigits = kCounterOffset + 19;  // after "C " + 16 hex + " "

void increment_counter(char* fence) {
  char* d = fence + kCounterDigits;
  for (int i = 7; i >= 0; --i) {
    char& c = d[i];
    if (c == '9') { c = 'a'; return; }
    if (c == 'f') { c = '0'; continue; }
    ++c;
    return;
  }
}

const char* fs_dir_prefix = "holdfast-lock-bench.";

struct Dir {
  std::string fs;    // label: tmpfs, disk
  std::string path;  // private directory for this run's lock files
};

std::vector<Dir> g_dirs;
int64_t g_fixed_iters = 0;

void make_dirs() {
  const char* env = std::getenv("HOLDFAST_LOCK_BENCH_DIRS");
  std::string spec = env && *env ? env : "tmpfs=/dev/shm,disk=/var/tmp";
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    std::string item = spec.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    auto eq = item.find('=');
    if (eq == std::string::npos) throw std::runtime_error("HOLDFAST_LOCK_BENCH_DIRS: want fs=dir, got " + item);
    std::string base = item.substr(eq + 1) + "/" + fs_dir_prefix + std::to_string(::getpid());
    check(::mkdir(base.c_str(), 0700) == 0 || errno == EEXIST, "mkdir " + base);
    g_dirs.push_back({item.substr(0, eq), base});
  }
}

void remove_dirs() {
  for (const auto& d : g_dirs) {
    ::nftw(d.path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
           FTW_DEPTH | FTW_PHYS);
  }
}

void set_counters(benchmark::State& state) {
  state.counters["ops_per_s"] = benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// ---- holdfast ----

void bm_handle(benchmark::State& state, std::string path, Backend backend) {
  auto lf = LockFile::open(path, LockOptions{backend});
  for (auto _ : state) {
    auto l = lf.acquire();
    l.release();
  }
  set_counters(state);
}

void bm_guard(benchmark::State& state, std::string path, Backend backend) {
  auto lf = LockFile::open(path, LockOptions{backend});
  for (auto _ : state) {
    LockFile::Guard g(lf);
    benchmark::DoNotOptimize(g.token());
  }
  set_counters(state);
}

void bm_path(benchmark::State& state, std::string path, Backend backend) {
  for (auto _ : state) {
    auto l = Lock::acquire(path, LockOptions{backend});
    l.release();
  }
  set_counters(state);
}

// One real acquisition through a LockFile, so the files exist (fence epoch already durable, as
// in any steady state) and the record bytes the mirror writes are the ones holdfast writes.
struct Sample {
  std::string record;        // final record (with token), as in the lock file
  size_t first_record = 0;   // dotlocks: bytes of the token-0 record written before the rename
};

Sample sample_record(const std::string& path, Backend backend) {
  auto lf = LockFile::open(path, LockOptions{backend});
  auto l = lf.acquire();
  Sample s;
  s.record = l.record().to_json();
  holdfast::HolderRecord zero = l.record();
  zero.token = 0;
  s.first_record = zero.to_json().size();
  return s;
}

// A kernel lock's state files: $HOLDFAST_STATE_DIR (default /var/tmp/holdfast), named after the
// lock file's device, inode and birth time (src/lock/state_dir.cpp).
std::string state_base(const std::string& path) {
  struct statx sx {};
  check(::statx(AT_FDCWD, path.c_str(), 0, STATX_BASIC_STATS | STATX_BTIME, &sx) == 0, "statx " + path);
  const bool birth = (sx.stx_mask & STATX_BTIME) != 0;
  char key[160];
  std::snprintf(key, sizeof key, "%x.%x.%llx.%llx.%x", sx.stx_dev_major, sx.stx_dev_minor,
                static_cast<unsigned long long>(sx.stx_ino),
                static_cast<unsigned long long>(birth ? sx.stx_btime.tv_sec : 0), birth ? sx.stx_btime.tv_nsec : 0);
  const char* env = std::getenv("HOLDFAST_STATE_DIR");
  return std::string(env != nullptr && *env != '\0' ? env : "/var/tmp/holdfast") + "/" + key;
}

// A record-lock request of `type` (F_WRLCK, F_UNLCK) for the whole file, pid 0 as OFD locks need.
struct flock whole_file(short type) {
  struct flock request {};
  request.l_type = type;
  request.l_whence = SEEK_SET;
  return request;
}

// ---- the syscalls each backend makes per acquisition (see strace -f of the handle loop) ----

// The handle's syscalls on a kernel lock, one acquire+release per step(). Holds exactly what the
// handle holds: the lock file and both state files open, the fence and the record mapped.
class KernelMirror {
 public:
  KernelMirror(const std::string& path, Backend backend) : KernelMirror(path, backend, state_base(path)) {}
  KernelMirror(const std::string& path, Backend backend, const std::string& base)
      : path_(path),
        fence_path_(base + ".fence"),
        record_(read_all(base + ".holder")),  // padded to the file's size, as holdfast writes it
        ofd_(backend == Backend::ofd) {
    const std::string holder = base + ".holder";
    fd_ = ::open(path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    fence_ = ::open(fence_path_.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    rec_ = ::open(holder.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    check(fd_ >= 0 && fence_ >= 0 && rec_ >= 0, "open " + path + " and its state files");
    // holdfast maps the fence (its first 128 bytes) and the record file's first page shared on a
    // local filesystem: the counter and the record are loads and stores, not syscalls.
    fmap_ = static_cast<char*>(::mmap(nullptr, kFenceRead, PROT_READ | PROT_WRITE, MAP_SHARED, fence_, 0));
    rmap_ = static_cast<char*>(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rec_, 0));
    check(fmap_ != MAP_FAILED && rmap_ != MAP_FAILED, "mmap state files");
  }
  KernelMirror(const KernelMirror&) = delete;
  KernelMirror& operator=(const KernelMirror&) = delete;
  ~KernelMirror() {
    ::munmap(fmap_, kFenceRead);
    ::munmap(rmap_, 4096);
    ::close(rec_);
    ::close(fence_);
    ::close(fd_);
  }

  void step() {
    if (ofd_) {
      check(::fcntl(fd_, F_OFD_SETLKW, &wr_) == 0, "F_OFD_SETLKW");  // kernel_lock
    } else {
      check(::flock(fd_, LOCK_EX) == 0, "flock");
    }
    struct stat now;
    check(::stat(path_.c_str(), &now) == 0, "stat");              // inode re-check
    check(::stat(fence_path_.c_str(), &now) == 0, "stat fence");  // fence file not replaced
    char fbuf[kFenceRead];
    std::memcpy(fbuf, fmap_, sizeof fbuf);
    increment_counter(fbuf);
    std::memcpy(fmap_ + kCounterOffset, fbuf + kCounterOffset, kCounterSize);
    std::memcpy(rmap_, record_.data(), record_.size());
    benchmark::ClobberMemory();
    if (ofd_) {
      check(::fcntl(fd_, F_OFD_SETLK, &un_) == 0, "F_OFD_SETLK unlock");
    } else {
      check(::flock(fd_, LOCK_UN) == 0, "flock LOCK_UN");
    }
  }

 private:
  const std::string path_;
  const std::string fence_path_;
  const std::string record_;
  const bool ofd_;
  const struct flock wr_ = whole_file(F_WRLCK);
  const struct flock un_ = whole_file(F_UNLCK);
  int fd_ = -1;
  int fence_ = -1;
  int rec_ = -1;
  char* fmap_ = nullptr;
  char* rmap_ = nullptr;
};

// The handle's syscalls on a dotlock, one acquire+release per step(): create a temp file with
// the token-0 record, publish it (link or rename), check, issue the token, release by moving aside.
class DotlockMirror {
 public:
  DotlockMirror(const std::string& path, Backend backend, Sample sample)
      : sample_(std::move(sample)),
        fence_path_(path + ".fence"),
        dir_(path.substr(0, path.rfind('/'))),
        base_(path.substr(path.rfind('/') + 1)),
        tmp_("." + base_ + ".new.0123456789abcdef"),
        aside_("." + base_ + ".gone.0123456789abcdef"),
        link_(backend == Backend::link),
        name_counter_(random_u64()) {  // temp names: any unique value (holdfast mixes a counter)
    fence_ = ::open(fence_path_.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    check(fence_ >= 0, "open " + fence_path_);
    fmap_ = static_cast<char*>(::mmap(nullptr, kFenceRead, PROT_READ | PROT_WRITE, MAP_SHARED, fence_, 0));
    check(fmap_ != MAP_FAILED, "mmap fence");
  }
  DotlockMirror(const DotlockMirror&) = delete;
  DotlockMirror& operator=(const DotlockMirror&) = delete;
  ~DotlockMirror() {
    ::munmap(fmap_, kFenceRead);
    ::close(fence_);
  }

  void step() {
    // Every name relative to the lock's directory, resolved once per acquire.
    int d = ::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    check(d >= 0, "open dir");
    hex16(++name_counter_, tmp_.data() + tmp_.size() - 16);
    int fd = ::openat(d, tmp_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0644);
    check(fd >= 0, "open temp");
    const std::string& record = sample_.record;
    check(::pwrite(fd, record.data(), sample_.first_record, 0) == static_cast<ssize_t>(sample_.first_record),
          "pwrite temp");
    struct stat mine, now;
    check(::fstat(fd, &mine) == 0, "fstat");
    if (link_) {
      check(::linkat(d, tmp_.c_str(), d, base_.c_str(), 0) == 0, "link");
      check(::fstat(fd, &now) == 0 && now.st_nlink >= 2, "fstat link count");
      check(::unlinkat(d, tmp_.c_str(), 0) == 0, "unlink temp");
    } else {
      check(::renameat2(d, tmp_.c_str(), d, base_.c_str(), RENAME_NOREPLACE) == 0, "renameat2");
    }
    check(::fstatat(d, base_.c_str(), &now, 0) == 0, "stat");         // post-create check
    check(::stat(fence_path_.c_str(), &now) == 0, "stat fence");  // fence file not replaced
    char fbuf[kFenceRead];
    std::memcpy(fbuf, fmap_, sizeof fbuf);
    increment_counter(fbuf);
    std::memcpy(fmap_ + kCounterOffset, fbuf + kCounterOffset, kCounterSize);
    benchmark::ClobberMemory();
    check(::pwrite(fd, record.data(), record.size(), 0) == static_cast<ssize_t>(record.size()), "pwrite record");
    // release: check it is ours, move aside, check again, unlink
    check(::fstatat(d, base_.c_str(), &now, 0) == 0, "stat name");
    hex16(++name_counter_, aside_.data() + aside_.size() - 16);
    check(::renameat(d, base_.c_str(), d, aside_.c_str()) == 0, "rename aside");
    check(::fstatat(d, aside_.c_str(), &now, 0) == 0, "stat aside");
    check(::unlinkat(d, aside_.c_str(), 0) == 0, "unlink aside");
    ::close(fd);
    ::close(d);
  }

 private:
  const Sample sample_;
  const std::string fence_path_;
  const std::string dir_;
  const std::string base_;
  std::string tmp_;    // its last 16 characters are rewritten for every name
  std::string aside_;  // likewise
  const bool link_;
  uint64_t name_counter_;
  int fence_ = -1;
  char* fmap_ = nullptr;
};

void bm_kernel_syscalls(benchmark::State& state, std::string path, Backend backend) {
  sample_record(path, backend);
  KernelMirror mirror(path, backend);
  for (auto _ : state) mirror.step();
  set_counters(state);
}

void bm_dotlock_syscalls(benchmark::State& state, std::string path, Backend backend) {
  DotlockMirror mirror(path, backend, sample_record(path, backend));
  for (auto _ : state) mirror.step();
  set_counters(state);
}

// The handle and its mirror on the same lock file, timed in alternating batches: each iteration
// is one pair (kBatch handle acquire+release, kBatch mirror steps, in turn first), and the pair's
// ratio is handle time / mirror time. The counter handle_over_mirror is the median of the pairs'
// ratios. Why: this machine is shared, and its speed moves by tens of percent between benchmarks
// seconds apart (the same binary's handle/mirror ratio measured 1.0x to 1.8x). Batches a few
// hundred microseconds apart see the same machine, so the pair's ratio cancels the drift.
template <class Mirror>
void run_paired(benchmark::State& state, LockFile& lf, bool guard, Mirror& mirror) {
  constexpr int kBatch = 32;
  auto run_mirror = [&] {
    for (int i = 0; i < kBatch; ++i) mirror.step();
  };
  auto run_handle = [&] {
    if (guard) {
      for (int i = 0; i < kBatch; ++i) {
        LockFile::Guard g(lf);
        benchmark::DoNotOptimize(g.token());
      }
      return;
    }
    for (int i = 0; i < kBatch; ++i) {
      auto l = lf.acquire();
      l.release();
    }
  };
  auto timed = [](auto& run) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<double> ratios, handle_ns, mirror_ns;
  bool handle_first = true;
  for (auto _ : state) {
    double h = 0, m = 0;
    if (handle_first) {
      h = timed(run_handle);
      m = timed(run_mirror);
    } else {
      m = timed(run_mirror);
      h = timed(run_handle);
    }
    handle_first = !handle_first;
    ratios.push_back(h / m);
    handle_ns.push_back(h / kBatch);
    mirror_ns.push_back(m / kBatch);
  }
  auto median = [](std::vector<double>& v) {
    if (v.empty()) return 0.0;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  state.counters["handle_over_mirror"] = median(ratios);
  state.counters["handle_ns"] = median(handle_ns);
  state.counters["mirror_ns"] = median(mirror_ns);
}

void bm_paired(benchmark::State& state, std::string path, Backend backend, bool guard) {
  auto lf = LockFile::open(path, LockOptions{backend});
  if (backend == Backend::ofd || backend == Backend::flock) {
    sample_record(path, backend);
    KernelMirror mirror(path, backend);
    run_paired(state, lf, guard, mirror);
  } else {
    DotlockMirror mirror(path, backend, sample_record(path, backend));
    run_paired(state, lf, guard, mirror);
  }
}

// ---- the bare primitives ----

void bm_bare(benchmark::State& state, std::string path, Backend backend) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOCTTY | O_CLOEXEC, 0644);
  check(fd >= 0, "open " + path);
  const struct flock wr = whole_file(F_WRLCK);
  const struct flock un = whole_file(F_UNLCK);
  const std::string dotlock = path + ".dot";
  for (auto _ : state) {
    switch (backend) {
      case Backend::ofd:
        check(::fcntl(fd, F_OFD_SETLKW, &wr) == 0, "F_OFD_SETLKW");
        check(::fcntl(fd, F_OFD_SETLK, &un) == 0, "F_OFD_SETLK unlock");
        break;
      case Backend::flock:
        check(::flock(fd, LOCK_EX) == 0, "flock");
        check(::flock(fd, LOCK_UN) == 0, "flock LOCK_UN");
        break;
      case Backend::excl: {
        int d = ::open(dotlock.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        check(d >= 0, "open O_EXCL");
        ::close(d);
        check(::unlink(dotlock.c_str()) == 0, "unlink");
        break;
      }
      default:
        check(::link(path.c_str(), dotlock.c_str()) == 0, "link");
        check(::unlink(dotlock.c_str()) == 0, "unlink");
        break;
    }
  }
  ::close(fd);
  set_counters(state);
}

void register_all() {
  const std::pair<const char*, Backend> backends[] = {
      {"ofd", Backend::ofd}, {"flock", Backend::flock}, {"excl", Backend::excl}, {"link", Backend::link}};
  for (const auto& d : g_dirs) {
    for (const auto& [bname, backend] : backends) {
      const std::string prefix = d.fs + ":" + bname + ":";
      const std::string path = d.path + "/" + bname + ".lock";
      const std::string bare_path = d.path + "/" + bname + ".bare";
      const bool kernel = backend == Backend::ofd || backend == Backend::flock;
      std::vector<benchmark::internal::Benchmark*> regs = {
          benchmark::RegisterBenchmark((prefix + "handle").c_str(), bm_handle, path, backend),
          benchmark::RegisterBenchmark((prefix + "syscalls").c_str(), kernel ? bm_kernel_syscalls : bm_dotlock_syscalls,
                                       path, backend),
          benchmark::RegisterBenchmark((prefix + "bare").c_str(), bm_bare, bare_path, backend),
          benchmark::RegisterBenchmark((prefix + "path").c_str(), bm_path, path, backend),
          benchmark::RegisterBenchmark((prefix + "guard").c_str(), bm_guard, path, backend),
          benchmark::RegisterBenchmark((prefix + "paired").c_str(), bm_paired, path, backend, false),
          benchmark::RegisterBenchmark((prefix + "paired_guard").c_str(), bm_paired, path, backend, true),
      };
      for (auto* r : regs) {
        r->UseRealTime()->Unit(benchmark::kNanosecond);
        if (g_fixed_iters > 0) r->Iterations(g_fixed_iters);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (const char* it = std::getenv("HOLDFAST_LOCK_BENCH_ITERS"); it && *it) g_fixed_iters = std::atoll(it);
  int rc = 0;
  try {
    make_dirs();
    register_all();
    benchmark::AddCustomContext("lock_dirs", [] {
      std::string s;
      for (const auto& d : g_dirs) s += (s.empty() ? "" : ",") + d.fs + "=" + d.path;
      return s;
    }());
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lock_bench: %s\n", e.what());
    rc = 1;
  }
  benchmark::Shutdown();
  remove_dirs();
  return rc;
}
