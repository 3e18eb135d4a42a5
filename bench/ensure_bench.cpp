// ensure cost: holdfast against the process-spawn floor, in the same run.
//
//   floor:spawn_true           fork + exec /bin/true + wait: the cheapest possible command
//   warm:command               `holdfast ensure NAME -- sleep` with the instance running (fork+exec+wait)
//   floor:warm_syscalls        the reads a warm ensure cannot avoid: open lock + F_OFD_GETLK + close,
//                              read the record, read /proc/PID/stat
//   warm:in_process            holdfast::ensure_running with the instance running
//   floor:true_x100            100 processes released together, each fork+exec+wait /bin/true:
//                              release to last exit (the spawn floor for 100 concurrent commands)
//   cold:library_x100          100 forked processes call ensure_running at once on a cold start;
//                              manual time = daemon READY (as the launcher received it) to the
//                              last client returning
//   cold:command_x100          same with 100 `holdfast ensure` commands
// bench/40-ensure.sh prints the ratios recorded in docs/PERFORMANCE.md.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"

namespace {

constexpr int kClients = 100;

int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Under $HOLDFAST_BENCH_DIR if set (e.g. /dev/shm: the default state directories are tmpfs),
// else /tmp. On ext4 the supervisor's record replacement (rename over the old record) starts
// writeback of the new file (auto_da_alloc), which on a busy disk delays READY's wake-up.
const std::string& scratch() {
  static const std::string dir = [] {
    const char* base = std::getenv("HOLDFAST_BENCH_DIR");
    std::string t = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/holdfast-ensure-bench-XXXXXX";
    if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("mkdtemp");
    return t;
  }();
  return dir;
}

std::string state_dir() { return scratch() + "/state"; }

// fork + execv + waitpid with stdout/stderr to /dev/null. Returns the exit status.
int spawn_wait(const std::vector<std::string>& argv) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    ::dup2(null, 1);
    ::dup2(null, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

holdfast::EnsureOptions options() {
  holdfast::EnsureOptions o;
  o.state_dir = state_dir();
  o.ready = holdfast::ReadySpec::parse("fd:3");
  return o;
}

// A daemon that is ready after 50 ms (so every client is already waiting when READY comes).
const std::vector<std::string> kDaemon = {"/bin/sh", "-c", "sleep 0.05; echo >&3; exec sleep 3600"};

void ensure_warm(const std::string& name) { holdfast::ensure_running(name, kDaemon, options()); }

void stop(const std::string& name) {
  holdfast::StopOptions s;
  s.state_dir = state_dir();
  s.kill_after = std::chrono::seconds(1);
  holdfast::stop_instance(name, s);
}

void BM_floor_spawn_true(benchmark::State& state) {
  for (auto _ : state) {
    if (spawn_wait({"/bin/true"}) != 0) state.SkipWithError("true failed");
  }
}

void BM_warm_command(benchmark::State& state) {
  ensure_warm("warm");
  std::vector<std::string> argv{HOLDFAST_CLI_PATH, "ensure", "warm", "--state-dir", state_dir(), "--ready", "fd:3", "--"};
  argv.insert(argv.end(), kDaemon.begin(), kDaemon.end());
  for (auto _ : state) {
    if (spawn_wait(argv) != 0) state.SkipWithError("holdfast ensure failed");
  }
}

void BM_floor_warm_syscalls(benchmark::State& state) {
  auto inst = holdfast::ensure_running("warm", kDaemon, options());
  const std::string lock = state_dir() + "/warm.lock";
  const std::string record = state_dir() + "/warm.json";
  const std::string stat = "/proc/" + std::to_string(inst.pid) + "/stat";
  char buf[4096];
  for (auto _ : state) {
    int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    ::fcntl(fd, F_OFD_GETLK, &fl);
    ::close(fd);
    for (const auto* path : {&record, &stat}) {
      fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC);
      benchmark::DoNotOptimize(::read(fd, buf, sizeof buf));
      ::close(fd);
    }
    benchmark::DoNotOptimize(fl.l_type);
  }
}

void BM_warm_in_process(benchmark::State& state) {
  ensure_warm("warm");
  for (auto _ : state) {
    auto inst = holdfast::ensure_running("warm", kDaemon, options());
    benchmark::DoNotOptimize(inst.pid);
  }
}

// Forks kClients workers blocked on a pipe, releases them together, runs `body` in each, and
// returns each worker's completion time (CLOCK_REALTIME ns; 0 if the body failed).
template <typename Body>
std::vector<int64_t> race(Body body, int64_t& released_at) {
  auto bytes = sizeof(int64_t) * kClients;
  auto* done = static_cast<int64_t*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  std::memset(done, 0, bytes);
  int gun[2];
  if (::pipe2(gun, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  std::vector<pid_t> kids;
  for (int i = 0; i < kClients; ++i) {
    pid_t k = ::fork();
    if (k == 0) {
      ::close(gun[1]);
      char c;
      while (::read(gun[0], &c, 1) < 0 && errno == EINTR) {
      }
      bool ok = false;
      try {
        ok = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "client %d: %s\n", i, e.what());
      }
      done[i] = ok ? realtime_ns() : 0;
      ::_exit(0);
    }
    kids.push_back(k);
  }
  ::close(gun[0]);
  released_at = realtime_ns();
  ::close(gun[1]);
  for (pid_t k : kids) ::waitpid(k, nullptr, 0);
  std::vector<int64_t> out(done, done + kClients);
  ::munmap(done, bytes);
  return out;
}

void BM_floor_true_x100(benchmark::State& state) {
  for (auto _ : state) {
    int64_t released = 0;
    auto done = race([] { return spawn_wait({"/bin/true"}) == 0; }, released);
    if (std::count(done.begin(), done.end(), 0) > 0) state.SkipWithError("true failed");
    state.SetIterationTime(static_cast<double>(*std::max_element(done.begin(), done.end()) - released) / 1e9);
  }
}

template <typename Body>
void cold(benchmark::State& state, const std::string& name, Body body) {
  double spawn_to_ready = 0, median = 0, release_to_last = 0;
  for (auto _ : state) {
    int64_t released = 0;
    auto done = race(body, released);
    auto status = holdfast::instance_status(name, state_dir());
    stop(name);
    if (std::count(done.begin(), done.end(), 0) > 0 || !status.record || status.record->ready_unix_ns == 0) {
      std::fprintf(stderr, "failed clients %ld; status: %s\n", static_cast<long>(std::count(done.begin(), done.end(), 0)),
                   status.reason.c_str());
      state.SkipWithError("a client failed");
      break;
    }
    int64_t ready = status.record->ready_unix_ns;
    spawn_to_ready += static_cast<double>(ready - status.record->spawned_unix_ns) / 1e6;
    // READY to the last client back; clamp at 0 (a client cannot return before READY).
    int64_t last = *std::max_element(done.begin(), done.end());
    release_to_last += static_cast<double>(last - released) / 1e6;
    std::nth_element(done.begin(), done.begin() + kClients / 2, done.end());
    median += static_cast<double>(std::max<int64_t>(0, done[kClients / 2] - ready)) / 1e6;
    state.SetIterationTime(static_cast<double>(std::max<int64_t>(0, last - ready)) / 1e9);
  }
  state.counters["spawn_to_ready_ms"] = benchmark::Counter(spawn_to_ready, benchmark::Counter::kAvgIterations);
  state.counters["release_to_last_ms"] = benchmark::Counter(release_to_last, benchmark::Counter::kAvgIterations);
  state.counters["median_client_ms"] = benchmark::Counter(median, benchmark::Counter::kAvgIterations);
}

void BM_cold_library_x100(benchmark::State& state) {
  cold(state, "cold-lib", [] { return holdfast::ensure_running("cold-lib", kDaemon, options()).ready; });
}

void BM_cold_command_x100(benchmark::State& state) {
  std::vector<std::string> argv{HOLDFAST_CLI_PATH, "ensure", "cold-cli", "--state-dir", state_dir(), "--ready", "fd:3", "--"};
  argv.insert(argv.end(), kDaemon.begin(), kDaemon.end());
  cold(state, "cold-cli", [&] { return spawn_wait(argv) == 0; });
}

BENCHMARK(BM_floor_spawn_true)->Name("floor:spawn_true")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_warm_command)->Name("warm:command")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_floor_warm_syscalls)->Name("floor:warm_syscalls")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_warm_in_process)->Name("warm:in_process")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_floor_true_x100)->Name("floor:true_x100")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cold_library_x100)->Name("cold:library_x100")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cold_command_x100)->Name("cold:command_x100")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  scratch();  // before any fork: forked clients must share one directory
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  try {
    stop("warm");
  } catch (...) {
  }
  std::error_code ec;
  std::filesystem::remove_all(scratch(), ec);
  return 0;
}
