// The etcd lock against bare etcd requests sent through the same client, in the same run, on an
// etcd that bench/80-etcd.sh starts (one member on loopback).
//
//   holdfast_etcd_bench [Google Benchmark flags]
//       uncontended acquire+release, one process:
//         library    EtcdLock::acquire() + release(), exactly what `holdfast lock --backend etcd://`
//                    does per grant: a new client (connection), lease grant, keepalive thread,
//                    the enqueue txn (create + owner read), the guarded delete txn, lease revoke
//         session    EtcdLock::acquire(EtcdSession&) + release(): the lease (and its keepalive
//                    thread and connection) granted once, outside the loop, as clientv3's
//                    concurrency.Session: per grant, the enqueue txn and the guarded delete txn
//         two_txn    the goal's baseline: two bare transactions over one kept-alive connection,
//                    the same shapes as the library's (create-if-absent put + owner range; delete
//                    guarded on the create revision)
//         four_req   the library's four requests bare over one connection: lease grant, the two
//                    transactions, lease revoke (what the protocol costs without our code)
//   holdfast_etcd_bench contended PROCS SECONDS
//       PROCS processes take and release one name with zero hold time for SECONDS; prints one
//       JSON line: grants, grants/s, overlaps (a grant before the previous holder began its
//       release), and the handoff wait from the start of one holder's release() to the next
//       grant's return (p50/p99/max ns), counting only grants whose previous holder was another
//       process.
//
// Environment: HOLDFAST_ETCD_BENCH_URL (etcd://127.0.0.1:PORT/PREFIX), required.
#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>
#include <string>
#include <vector>

#include "etcd/client.hpp"
#include "holdfast/etcd.hpp"

namespace {

using nlohmann::json;
using holdfast::etcd::base64_encode;
using holdfast::etcd::int_field;
using holdfast::etcd::prefix_end;

holdfast::EtcdOptions bench_options() {
  const char* url = std::getenv("HOLDFAST_ETCD_BENCH_URL");
  if (url == nullptr) {
    std::fprintf(stderr, "holdfast_etcd_bench: set HOLDFAST_ETCD_BENCH_URL=etcd://HOST:PORT/PREFIX\n");
    std::exit(2);
  }
  return holdfast::parse_etcd_url(url);
}

int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

const std::string kRecord = R"({"host":"bench","pid":1})";

void library(benchmark::State& state) {
  const auto options = bench_options();
  for (auto _ : state) {
    auto lock = holdfast::EtcdLock::acquire(options, "uncontended-library", kRecord, false, std::nullopt);
    if (!lock) state.SkipWithError("not granted");
    benchmark::DoNotOptimize(lock->token());
    lock->release();
  }
}

void session(benchmark::State& state) {
  holdfast::EtcdSession session(bench_options());
  for (auto _ : state) {
    auto lock = holdfast::EtcdLock::acquire(session, "uncontended-session", kRecord, false, std::nullopt);
    if (!lock) state.SkipWithError("not granted");
    benchmark::DoNotOptimize(lock->token());
    lock->release();
  }
}

// The library's enqueue transaction without a lease, then its guarded delete.
json enqueue_txn(const std::string& key, const std::string& queue, const std::string& lease) {
  json put{{"key", base64_encode(key)}, {"value", base64_encode(kRecord)}};
  if (!lease.empty()) put["lease"] = lease;
  json owner{{"key", base64_encode(queue)},
             {"range_end", base64_encode(prefix_end(queue))},
             {"sort_target", "CREATE"},
             {"sort_order", "ASCEND"},
             {"limit", "1"}};
  return {{"compare", json::array({json{{"key", base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"}, {"create_revision", "0"}}})},
          {"success", json::array({json{{"request_put", put}}, json{{"request_range", owner}}})},
          {"failure", json::array({json{{"request_range", {{"key", base64_encode(key)}}}}})}};
}

json guarded_delete(const std::string& key, int64_t revision) {
  return {{"compare", json::array({json{{"key", base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"},
                                        {"create_revision", std::to_string(revision)}}})},
          {"success", json::array({json{{"request_delete_range", {{"key", base64_encode(key)}}}}})}};
}

void bare(benchmark::State& state, bool with_lease) {
  const auto options = bench_options();
  holdfast::etcd::Client client(options);
  const std::string queue = options.prefix + (with_lease ? "/uncontended-four/" : "/uncontended-two/");
  const std::string key = queue + "1";
  for (auto _ : state) {
    std::string lease;
    if (with_lease) lease = std::to_string(int_field(client.call("/v3/lease/grant", {{"TTL", "10"}}), "ID"));
    json a = client.call("/v3/kv/txn", enqueue_txn(key, queue, lease));
    const int64_t revision = int_field(a["header"], "revision");
    if (!a.value("succeeded", false)) state.SkipWithError("key already present");
    client.call("/v3/kv/txn", guarded_delete(key, revision));
    if (with_lease) client.call("/v3/lease/revoke", {{"ID", lease}});
  }
}

// One grant as the contenders record it in shared memory.
struct Grant {
  uint64_t token;
  int32_t proc;
  int64_t granted_ns;    // acquire() returned
  int64_t released_ns;   // release() called
};

int contended(int procs, double seconds) {
  const auto options = bench_options();
  constexpr size_t kMax = 200000;
  auto* shared = static_cast<Grant*>(::mmap(nullptr, sizeof(Grant) * kMax + 64, PROT_READ | PROT_WRITE,
                                            MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (shared == MAP_FAILED) return 1;
  auto* count = new (reinterpret_cast<char*>(shared) + sizeof(Grant) * kMax) std::atomic<uint64_t>(0);
  const int64_t end = now_ns() + static_cast<int64_t>(seconds * 1e9);
  std::vector<pid_t> children;
  for (int p = 0; p < procs; ++p) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      try {
        while (now_ns() < end) {
          auto lock = holdfast::EtcdLock::acquire(options, "contended", kRecord, false, std::nullopt);
          const int64_t granted = now_ns();
          const uint64_t i = count->fetch_add(1);
          const int64_t releasing = now_ns();
          if (i < kMax) shared[i] = Grant{lock->token(), p, granted, releasing};
          lock->release();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "contender %d: %s\n", p, e.what());
        ::_exit(1);
      }
      ::_exit(0);
    }
    children.push_back(pid);
  }
  int failed = 0;
  for (pid_t c : children) {
    int status = 0;
    ::waitpid(c, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  const size_t n = std::min<uint64_t>(count->load(), kMax);
  std::vector<Grant> grants(shared, shared + n);
  std::sort(grants.begin(), grants.end(), [](const Grant& a, const Grant& b) { return a.token < b.token; });
  std::vector<int64_t> waits;
  size_t overlaps = 0;
  for (size_t i = 1; i < grants.size(); ++i) {
    if (grants[i].granted_ns < grants[i - 1].released_ns) ++overlaps;
    if (grants[i].proc != grants[i - 1].proc) waits.push_back(grants[i].granted_ns - grants[i - 1].released_ns);
  }
  std::sort(waits.begin(), waits.end());
  auto pct = [&](double q) {
    return waits.empty() ? int64_t{0} : waits[std::min(waits.size() - 1, static_cast<size_t>(q * static_cast<double>(waits.size())))];
  };
  fmt::print(R"({{"procs":{},"seconds":{},"grants":{},"grants_per_s":{:.1f},"handoffs":{},"overlaps":{},"failed_procs":{},)"
             R"("wait_p50_ns":{},"wait_p99_ns":{},"wait_max_ns":{}}})"
             "\n",
             procs, seconds, n, static_cast<double>(n) / seconds, waits.size(), overlaps, failed, pct(0.5), pct(0.99),
             waits.empty() ? 0 : waits.back());
  return failed == 0 && overlaps == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 4 && std::string(argv[1]) == "contended") return contended(std::atoi(argv[2]), std::atof(argv[3]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "holdfast_etcd_bench: %s\n", e.what());
    return 1;
  }
  benchmark::RegisterBenchmark("uncontended/library", library)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("uncontended/session", session)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("uncontended/two_txn", bare, false)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("uncontended/four_req", bare, true)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
