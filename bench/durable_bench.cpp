// Durable hand-off benchmarks, each next to its baseline in the same run:
//   atomic_write vs a hand-written write+fsync+rename+fsync(dir), interleaved pairwise (4 KiB, 1 MiB);
//   digest throughput (XXH3-128, sha256) vs memcpy of the same buffer;
//   wait detection latency after the data lands: inotify vs 500 ms polling.
// Files go to $HOLDFAST_BENCH_DIR (default /tmp, ext4 on the reference machine).
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "holdfast/atomic_write.hpp"
#include "holdfast/digest.hpp"
#include "holdfast/wait.hpp"

namespace {

std::string bench_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("HOLDFAST_BENCH_DIR");
    std::string templ = std::string(base != nullptr ? base : "/tmp") + "/holdfast-bench-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    return templ;
  }();
  return dir;
}

std::string payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 2654435761u) >> 13);
  return s;
}

// One durable replace the way a careful programmer writes it by hand (no O_TMPFILE, no mode or
// owner handling, no symlink checks): the baseline.
void hand_written_replace(int dfd, const std::string& tmp, const std::string& path, const std::string& data) {
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  size_t off = 0;
  while (off < data.size()) off += static_cast<size_t>(::write(fd, data.data() + off, data.size() - off));
  if (::fsync(fd) != 0) std::abort();
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0 || ::fsync(dfd) != 0) std::abort();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// atomic_write and the hand-written loop alternate (order flipped every pair), so both see the
// same fsync weather; the reported ratio is the median of the per-pair ratios.
void BM_DurableReplacePaired(benchmark::State& state) {
  std::string data = payload(static_cast<size_t>(state.range(0)));
  std::string dir = bench_dir();
  std::string target = dir + "/atomic", manual = dir + "/manual", tmp = dir + "/.manual.tmp";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  std::vector<double> ours, base, ratio;
  bool flip = false;
  for (auto _ : state) {
    double t[2];
    for (int k = 0; k < 2; ++k) {
      bool do_ours = (k == 0) != flip;
      auto t0 = std::chrono::steady_clock::now();
      if (do_ours) {
        holdfast::atomic_write(target, data);
      } else {
        hand_written_replace(dfd, tmp, manual, data);
      }
      t[do_ours ? 0 : 1] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    }
    flip = !flip;
    ours.push_back(t[0]);
    base.push_back(t[1]);
    ratio.push_back(t[0] / t[1]);
    state.SetIterationTime((t[0] + t[1]) / 1e6);
  }
  ::close(dfd);
  state.counters["holdfast_us"] = median(ours);
  state.counters["baseline_us"] = median(base);
  state.counters["ratio"] = median(ratio);
}

constexpr int64_t kHashBytes = 16 << 20;

void BM_DigestXxh128(benchmark::State& state) {
  std::string data = payload(kHashBytes);
  for (auto _ : state) benchmark::DoNotOptimize(holdfast::digest_bytes(holdfast::DigestAlg::xxh128, data));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kHashBytes);
}

void BM_DigestSha256(benchmark::State& state) {
  std::string data = payload(kHashBytes);
  for (auto _ : state) benchmark::DoNotOptimize(holdfast::digest_bytes(holdfast::DigestAlg::sha256, data));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kHashBytes);
}

void BM_Memcpy(benchmark::State& state) {
  std::string data = payload(kHashBytes);
  std::string dst(kHashBytes, '\0');
  for (auto _ : state) {
    std::memcpy(dst.data(), data.data(), data.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kHashBytes);
}

// Time from the moment the last bytes are written (the file had its full size all along) to the
// moment wait_for_content returns matched. Manual time: only that latency is measured.
void wait_latency(benchmark::State& state, bool inotify) {
  std::string data = payload(64 << 10);
  std::string src = bench_dir() + "/wait-src";
  std::string dst = bench_dir() + "/wait-dst";
  holdfast::atomic_write(src, data, {.sync = false});
  auto expected = holdfast::expected_from_file(src, {holdfast::DigestAlg::xxh128});
  holdfast::WaitOptions opts;
  opts.use_inotify = inotify;
  // Content-detection latency for a reader on this host (the device figure is in
  // tests/durable/device_test.cpp, DeviceFlush.DetectionLatencyFigure).
  opts.device = holdfast::DeviceCheck::page_cache;
  opts.interval = std::chrono::milliseconds(500);
  opts.timeout = std::chrono::seconds(10);
  for (auto _ : state) {
    int fd = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (::ftruncate(fd, static_cast<off_t>(data.size())) != 0) state.SkipWithError("ftruncate");
    std::atomic<int64_t> done_ns{0};
    std::thread waiter([&] {
      auto r = holdfast::wait_for_content(dst, expected, opts);
      if (!r.matched) state.SkipWithError("wait did not match");
      done_ns = std::chrono::steady_clock::now().time_since_epoch().count();
    });
    // Land the bytes at a random phase of the polling interval.
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + std::rand() % 480));
    auto landed = std::chrono::steady_clock::now();
    if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) state.SkipWithError("pwrite");
    ::close(fd);
    waiter.join();
    state.SetIterationTime(static_cast<double>(done_ns.load() - landed.time_since_epoch().count()) / 1e9);
  }
}

void BM_WaitLatencyInotify(benchmark::State& state) { wait_latency(state, true); }
void BM_WaitLatencyPolling500ms(benchmark::State& state) { wait_latency(state, false); }

BENCHMARK(BM_DurableReplacePaired)->Arg(4096)->Iterations(400)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DurableReplacePaired)->Arg(1 << 20)->Iterations(200)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DigestXxh128)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DigestSha256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WaitLatencyInotify)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WaitLatencyPolling500ms)->UseManualTime()->Iterations(8)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::string cmd = "rm -rf '" + bench_dir() + "'";
  return std::system(cmd.c_str()) == 0 ? 0 : 1;
}
