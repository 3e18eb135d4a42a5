// The host-side flush detector on a real block-device filesystem: ext2 on a loop device, whose
// image is read directly with debugfs as the DEVICE's view (what a USB board reading its own
// flash sees), bypassing the mount and this host's page cache of that filesystem.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"
#include "loop_mount.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;
using namespace std::chrono_literals;

namespace {

#define SKIP_WITHOUT_LOOP()                                                   \
  if (auto why = LoopExt2::unavailable_reason(); !why.empty()) GTEST_SKIP() << why

// (a) a plain write reaches the mount at once and the device ~30 s later; (b) `wait` does not
// report success while the device lacks the content; (c) `holdfast sync` and `wait --flush` put
// it there at once, and a running wait then returns.
TEST(DeviceFlush, WaitNeverMatchesWhileTheDeviceLacksTheBytes) {
  SKIP_WITHOUT_LOOP();
  LoopExt2 dev;
  TempDir dir;
  std::string data = pattern(300000, 41);
  spit(dir / "src", data);
  spit(dev / "code.py", data);  // an editor's save: plain writes, no fsync

  // (a) The mount has it; the device does not (dirty pages wait ~30 s for writeback).
  ASSERT_EQ(slurp(dev / "code.py"), data);
  ASSERT_NE(dev.device_view("code.py"), data) << "the device already holds the data: writeback ran early";

  // (b) The detector says "content matches, device not yet".
  auto expected = expected_from_file(dir / "src", {DigestAlg::xxh128});
  auto obs = observe(dev / "code.py", expected, {});
  EXPECT_FALSE(obs.matched) << obs.device;
  EXPECT_TRUE(obs.content_matched);
  EXPECT_TRUE(obs.device_pending);
  EXPECT_NE(obs.differs.find("not on the device yet"), std::string::npos) << obs.differs;
  auto early = hf({"wait", "--like", dir / "src", "--timeout", "1s", dev / "code.py"});
  EXPECT_EQ(early.exit_code, exit_code::conflict) << "wait matched the page cache: " << early.err;
  EXPECT_NE(early.err.find("not on the device yet"), std::string::npos) << early.err;
  ASSERT_NE(dev.device_view("code.py"), data) << "writeback ran during the test: (b) shows nothing";
  // Only the page cache's view is accepted with --page-cache (a reader on this host).
  EXPECT_EQ(hf({"wait", "--like", dir / "src", "--page-cache", "--timeout", "5s", dev / "code.py"}).exit_code, 0);

  // (c) A running wait returns once `holdfast sync` has put the bytes on the device.
  Background waiter({"wait", "--like", dir / "src", "--timeout", "120s", "--json", dev / "code.py"}, dir / "w.out");
  ASSERT_EQ(hf({"sync", dev / "code.py"}).exit_code, 0);
  EXPECT_EQ(dev.device_view("code.py"), data);
  ASSERT_EQ(waiter.wait(), 0) << waiter.err();
  auto j = nlohmann::json::parse(waiter.out());
  EXPECT_TRUE(j["matched"].get<bool>());
  EXPECT_NE(j["device"].get<std::string>().find("on the device"), std::string::npos) << j.dump();

  // (c') `wait --flush` pushes the bytes itself.
  std::string next = pattern(120000, 42);
  spit(dir / "src2", next);
  spit(dev / "lib.py", next);
  ASSERT_NE(dev.device_view("lib.py"), next);
  auto flushed = hf({"wait", "--like", dir / "src2", "--flush", "--timeout", "30s", dev / "lib.py"});
  ASSERT_EQ(flushed.exit_code, 0) << flushed.err;
  EXPECT_EQ(dev.device_view("lib.py"), next);
}

// The same through the pending journal: a --no-sync write is not confirmed until it is on the
// device.
TEST(DeviceFlush, PendingWaitsForTheDevice) {
  SKIP_WITHOUT_LOOP();
  LoopExt2 dev;
  TempDir dir;
  std::string journal = dir / "pending.jsonl";
  std::string data = pattern(50000, 43);
  ASSERT_EQ(hf({"write", "--no-sync", "--journal", journal, dev / "a.py"}, data).exit_code, 0);
  ASSERT_NE(dev.device_view("a.py"), data);
  auto r = hf({"wait", "--pending", "--journal", journal, "--timeout", "1s"});
  EXPECT_EQ(r.exit_code, exit_code::conflict) << r.err;
  EXPECT_NE(r.err.find("not on the device yet"), std::string::npos) << r.err;
  auto f = hf({"wait", "--pending", "--flush", "--journal", journal, "--timeout", "30s"});
  EXPECT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(dev.device_view("a.py"), data);
  EXPECT_TRUE(journal_read(journal).empty());
}

// Natural writeback (~30 s dirty expiry + the 5 s flusher tick): only with HOLDFAST_SOAK.
TEST(DeviceFlush, NaturalWritebackSoak) {
  SKIP_WITHOUT_LOOP();
  if (std::getenv("HOLDFAST_SOAK") == nullptr) GTEST_SKIP() << "set HOLDFAST_SOAK=1 (takes ~35 s)";
  LoopExt2 dev;
  TempDir dir;
  std::string data = pattern(200000, 44);
  spit(dir / "src", data);
  spit(dev / "code.py", data);
  ASSERT_NE(dev.device_view("code.py"), data);
  auto r = hf({"wait", "--like", dir / "src", "--timeout", "120s", dev / "code.py"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(dev.device_view("code.py"), data) << "wait returned before the device held the bytes";
}

// When the host-side detector sees the bytes reach the device, --via checks the reader at once
// instead of at the next (here: 60 s) interval.
TEST(DeviceFlush, ViaChecksTheReaderAsSoonAsTheHostCopyReachesTheDevice) {
  SKIP_WITHOUT_LOOP();
  LoopExt2 dev;
  TempDir dir;
  std::string data = pattern(40000, 45);
  spit(dir / "src", data);
  spit(dev / "code.py", data);
  // A global sync() from a test running in parallel can write it back first: then there is
  // nothing left to show here.
  if (dev.device_view("code.py") == data) GTEST_SKIP() << "the kernel wrote back already (another process synced)";
  // The reader: debugfs on the image, naming the file as the device does (/code.py).
  // It marks each run, so the test syncs only after the first check has failed.
  std::string via = "debugfs -R \"cat $1\" " + dev.image() + " 2>/dev/null; echo >> " + (dir / "runs");
  Background waiter({"wait", "--like", dir / "src", "--via", via, "--via-map", dev.mount_path() + "=/", "--interval",
                     "60s", "--timeout", "120s", "--json", dev / "code.py"},
                    dir / "w.out");
  while (slurp(dir / "runs").empty()) {
    if (waiter.exited() && dev.device_view("code.py") == data) GTEST_SKIP() << "the kernel wrote back already";
    ASSERT_FALSE(waiter.exited()) << waiter.err();
    std::this_thread::sleep_for(10ms);
  }
  if (dev.device_view("code.py") == data) GTEST_SKIP() << "the kernel wrote back during the first check";
  auto t0 = mono_us();
  ASSERT_EQ(hf({"sync", dev / "code.py"}).exit_code, 0);
  ASSERT_EQ(waiter.wait(), 0) << waiter.err();
  EXPECT_EQ(slurp(dir / "runs").size(), 2U) << "one failed check before the sync, one right after it";
  // Long before the 60 s interval: only the host-side trigger explains it.
  EXPECT_LT(mono_us() - t0, 45 * 1000000LL);
}

}  // namespace

namespace {

// The figure for docs/PERFORMANCE.md (HOLDFAST_BENCH=1; as root): how long after the bytes
// reach the device (`holdfast sync` returns) each detector notices, in the same rounds:
//   local  — `wait --like` on the host (cachestat every 2 ms, sync_file_range on in-flight I/O);
//   via    — `wait --via 'debugfs …' --interval 500ms` with the host-side trigger;
//   poll   — reading the device every 500 ms, as the CircuitPython web editor does.
TEST(DeviceFlush, DetectionLatencyFigure) {
  SKIP_WITHOUT_LOOP();
  if (std::getenv("HOLDFAST_BENCH") == nullptr) GTEST_SKIP() << "set HOLDFAST_BENCH=1 (a measurement, ~15 s)";
  LoopExt2 dev;
  TempDir dir;
  // HOLDFAST_BENCH_LOAD=N adds N busy-looping processes for the whole measurement (a loaded run).
  const int spinners = std::getenv("HOLDFAST_BENCH_LOAD") != nullptr ? std::atoi(std::getenv("HOLDFAST_BENCH_LOAD")) : 0;
  std::vector<pid_t> spinning;
  struct Reap {
    std::vector<pid_t>& pids;
    ~Reap() {
      for (pid_t p : pids) {
        ::kill(p, SIGKILL);
        (void)wait_child(p);
      }
    }
  } reap{spinning};
  for (int i = 0; i < spinners; ++i) {
    spinning.push_back(fork_child([] {
      volatile uint64_t n = 0;
      for (;;) {
        n = n + 1;
      }
      return 0;
    }));
  }
  constexpr int kRounds = 12;
  std::vector<double> local_ms, via_ms, poll_ms;
  for (int round = 0; round < kRounds; ++round) {
    std::string name = "r" + std::to_string(round) + ".py";
    std::string data = pattern(60000, 100 + static_cast<uint64_t>(round));
    spit(dir / "src", data);
    spit(dev / name, data);
    ASSERT_NE(dev.device_view(name), data);
    std::string via = "debugfs -R \"cat $1\" " + dev.image() + " 2>/dev/null";
    Background local({"wait", "--like", dir / "src", "--timeout", "60s", dev / name}, dir / "l.out");
    Background viaw({"wait", "--like", dir / "src", "--via", via, "--via-map", dev.mount_path() + "=/", "--interval",
                     "500ms", "--timeout", "60s", dev / name},
                    dir / "v.out");
    std::atomic<int64_t> poll_seen{0};
    std::atomic<bool> stop{false};
    // The 500 ms poller starts at a random phase, like a poll loop that was already running.
    std::thread poller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(37 * round % 500));
      while (!stop.load()) {
        if (dev.device_view(name) == data) {
          poll_seen = mono_us();
          return;
        }
        std::this_thread::sleep_for(500ms);
      }
    });
    std::this_thread::sleep_for(700ms);  // every detector has looked at least once (measurement only)
    ASSERT_FALSE(local.exited());
    // The bytes are on the device when sync_path's last fsync (of the block device) returns.
    holdfast::sync_path(dev / name);
    int64_t synced = mono_us();
    std::atomic<int64_t> local_seen{0}, via_seen{0};
    std::thread lw([&] {
      local.wait();
      local_seen = mono_us();
    });
    std::thread vw([&] {
      viaw.wait();
      via_seen = mono_us();
    });
    lw.join();
    vw.join();
    poller.join();
    stop = true;
    local_ms.push_back(static_cast<double>(local_seen - synced) / 1000.0);
    via_ms.push_back(static_cast<double>(via_seen - synced) / 1000.0);
    poll_ms.push_back(static_cast<double>(poll_seen - synced) / 1000.0);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto worst = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  std::printf("detection latency after the bytes reached the device (%d rounds, %d extra spinners, load %s, ms): median / max\n",
              kRounds, spinners, slurp("/proc/loadavg").substr(0, 14).c_str());
  std::printf("  local wait (host-side detector) : %7.1f / %7.1f\n", median(local_ms), worst(local_ms));
  std::printf("  wait --via, 500 ms interval     : %7.1f / %7.1f\n", median(via_ms), worst(via_ms));
  std::printf("  500 ms device poll (web editor) : %7.1f / %7.1f\n", median(poll_ms), worst(poll_ms));
  std::printf("  ratio local/poll (median)       : %.3f\n", median(local_ms) / median(poll_ms));
}

}  // namespace
