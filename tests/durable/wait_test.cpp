// `holdfast wait`: never done on size alone, done within one event (or one interval) after the
// bytes land, times out saying what differs; --via in both protocols.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <thread>

#include "holdfast/digest.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"
#include "support/faultfs.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;
using namespace std::chrono_literals;

namespace {

// A writer that does what a careless copier (or a vfat driver) does: the file reaches its full
// size at once (ftruncate), the bytes arrive `delay` later. Stores the landing time (mono µs).
pid_t size_first_writer(const std::string& path, const std::string& data, std::chrono::milliseconds delay,
                        int64_t* landed_us) {
  return fork_child([=] {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(data.size())) != 0) return 1;
    std::this_thread::sleep_for(delay);
    if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) return 2;
    // The bytes cannot be on the device before this; fdatasync puts them there (wait checks the
    // device, not the page cache, and may see them there before fdatasync returns).
    *landed_us = mono_us();
    if (::fdatasync(fd) != 0) return 3;
    ::close(fd);
    return 0;
  });
}

class WaitFs : public ::testing::TestWithParam<std::string> {
 protected:
  TempDir dir{GetParam()};
};

TEST_P(WaitFs, SizeFirstWriterIsNotDoneUntilBytesMatch) {
  std::string data = pattern(256 << 10, 11);
  spit(dir / "src", data);
  auto* landed = static_cast<int64_t*>(shared_memory(sizeof(int64_t)));
  // Start the writer first so the size is already right when wait begins.
  pid_t w = size_first_writer(dir / "dst", data, 600ms, landed);
  std::this_thread::sleep_for(100ms);
  // A 5 s interval: only an event can end this soon after landing.
  auto r = hf({"wait", "--like", dir / "src", "--interval", "5s", "--timeout", "10s", "--json", dir / "dst"});
  int64_t returned = mono_us();
  ASSERT_EQ(wait_child(w), 0);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["matched"].get<bool>());
  EXPECT_TRUE(j["inotify"].get<bool>());
  ASSERT_GT(*landed, 0);
  EXPECT_GE(returned, *landed) << "wait returned before the bytes landed";
  // Event-driven: one event (the write/close) after landing; typically ~1 ms, bounded generously
  // for loaded CI machines but far below the interval.
  EXPECT_LT(returned - *landed, 1500000) << "µs after landing";
  free_shared_memory(landed, sizeof(int64_t));
}

// A wait that matches at its first check never sets up inotify: closing an inotify instance with
// marks waits for an SRCU grace period (10-15 ms measured), which would delay the exit the caller
// waits for. (The JSON says whether inotify was used.)
TEST_P(WaitFs, ImmediateMatchCreatesNoInotifyWatch) {
  spit_durable(dir / "src", "same\n");
  spit_durable(dir / "dst", "same\n");
  auto r = hf({"wait", "--like", dir / "src", "--page-cache", "--timeout", "10s", "--json", dir / "dst"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["matched"].get<bool>());
  EXPECT_EQ(j["checks"].get<int>(), 1);
  EXPECT_FALSE(j["inotify"].get<bool>());
}

TEST_P(WaitFs, PollingFallbackReturnsWithinOneInterval) {
  std::string data = pattern(64 << 10, 12);
  spit(dir / "src", data);
  auto* landed = static_cast<int64_t*>(shared_memory(sizeof(int64_t)));
  pid_t w = size_first_writer(dir / "dst", data, 500ms, landed);
  std::this_thread::sleep_for(50ms);
  auto r = hf({"wait", "--like", dir / "src", "--no-inotify", "--interval", "250ms", "--timeout", "10s",
                     "--json", dir / "dst"});
  int64_t returned = mono_us();
  ASSERT_EQ(wait_child(w), 0);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(nlohmann::json::parse(r.out)["inotify"].get<bool>());
  EXPECT_GE(returned, *landed);
  EXPECT_LT(returned - *landed, 250000 + 250000) << "µs after landing (one interval + slack)";
  free_shared_memory(landed, sizeof(int64_t));
}

TEST_P(WaitFs, KilledWriterTimesOutSayingWhatDiffers) {
  std::string data = pattern(100000, 13);
  spit(dir / "src", data);
  // Killed after half the bytes: the size differs.
  spit(dir / "half", data.substr(0, 50000));
  auto r = hf({"wait", "--like", dir / "src", "--timeout", "700ms", dir / "half"});
  EXPECT_EQ(r.exit_code, exit_code::conflict);
  EXPECT_NE(r.err.find("timed out after"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("size 50000/100000"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dir / "half"), std::string::npos);

  // A size-first writer SIGKILLed before its data: size right, digest wrong.
  pid_t w = fork_child([&] {
    int fd = ::open((dir / "torn").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    (void)::ftruncate(fd, static_cast<off_t>(data.size()));
    (void)::pwrite(fd, data.data(), 1000, 0);
    ::kill(::getpid(), SIGKILL);
    return 0;
  });
  EXPECT_EQ(wait_child(w), 128 + SIGKILL);
  auto t = hf({"wait", "--like", dir / "src", "--timeout", "700ms", "--json", dir / "torn"});
  EXPECT_EQ(t.exit_code, exit_code::conflict);
  EXPECT_NE(t.err.find("digest mismatch"), std::string::npos) << t.err;
  auto j = nlohmann::json::parse(t.out);
  EXPECT_FALSE(j["matched"].get<bool>());
  EXPECT_EQ(j["size"].get<uint64_t>(), data.size());

  auto p = hf({"wait", "--like", dir / "src", "--timeout", "300ms", "--on-timeout", "proceed", dir / "torn"});
  EXPECT_EQ(p.exit_code, 0);
  EXPECT_NE(p.err.find("warning"), std::string::npos) << p.err;

  auto missing = hf({"wait", "--like", dir / "src", "--timeout", "300ms", dir / "never"});
  EXPECT_EQ(missing.exit_code, exit_code::conflict);
  EXPECT_NE(missing.err.find("missing"), std::string::npos) << missing.err;
}

TEST_P(WaitFs, AtomicReplaceIsSeenAtOnce) {
  std::string data = pattern(1 << 20, 14);
  spit(dir / "src", data);
  spit(dir / "dst", "old");
  std::thread writer([&] {
    std::this_thread::sleep_for(300ms);
    hf({"write", dir / "dst"}, data);
  });
  auto t0 = mono_us();
  auto r = hf({"wait", "--like", dir / "src", "--timeout", "10s", dir / "dst"});
  auto took = mono_us() - t0;
  writer.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(took, 250000);
  EXPECT_EQ(slurp(dir / "dst"), data);
}

INSTANTIATE_TEST_SUITE_P(Fs, WaitFs, ::testing::ValuesIn(test_roots()),
                         [](const auto& info) { return info.param == "/dev/shm" ? std::string("tmpfs") : std::string("ext4"); });

TEST(Wait, DelayedDataOnFaultfs) {
  if (auto why = FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  FaultFs fs("delay_data=700");
  TempDir dir;
  std::string data = pattern(200000, 15);
  spit(dir / "src", data);
  // A plain writer (no fsync): size visible at once, bytes 700 ms after close.
  spit(fs / "code.py", data);
  int64_t closed = mono_us();
  struct stat st {};
  ASSERT_EQ(::stat((fs / "code.py").c_str(), &st), 0);
  ASSERT_EQ(static_cast<size_t>(st.st_size), data.size());  // size already "right"
  auto r = hf({"wait", "--like", dir / "src", "--interval", "100ms", "--timeout", "10s", "--json", fs / "code.py"});
  int64_t returned = mono_us();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(returned - closed, 650000) << "wait accepted the file before its bytes landed";
  // No event for the landing: found by the interval re-check, within one interval (+ slack).
  EXPECT_LT(returned - closed, 700000 + 100000 + 500000);
  EXPECT_GT(nlohmann::json::parse(r.out)["checks"].get<unsigned>(), 1u);
  EXPECT_EQ(slurp(fs / "code.py"), data);

  // `holdfast write` fsyncs, which lands the bytes: the reader sees them at once.
  std::string next = pattern(100000, 16);
  spit(dir / "src2", next);
  ASSERT_EQ(hf({"write", fs / "code.py"}, next).exit_code, 0);
  auto t0 = mono_us();
  auto q = hf({"wait", "--like", dir / "src2", "--timeout", "10s", fs / "code.py"});
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_LT(mono_us() - t0, 500000);
  // And a writer that cannot fsync is fixed by `holdfast sync`.
  spit(fs / "cfg", data);
  ASSERT_EQ(hf({"sync", fs / "cfg"}).exit_code, 0);
  EXPECT_EQ(slurp(fs / "cfg"), data);
}

TEST(Wait, ExplicitSizeAndDigest) {
  TempDir dir;
  spit_durable(dir / "f", "abc");
  auto sha = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(hf({"wait", "--size", "3", "--digest", sha, "--timeout", "1s", dir / "f"}).exit_code, 0);
  // Right digest, wrong size: not done.
  EXPECT_EQ(hf({"wait", "--size", "4", "--digest", sha, "--timeout", "300ms", dir / "f"}).exit_code,
            exit_code::conflict);
  EXPECT_EQ(hf({"wait", "--size", "3", "--digest", "sha256:xyz", dir / "f"}).exit_code, exit_code::data);
  EXPECT_EQ(hf({"wait", "--size", "3", dir / "f"}).exit_code, exit_code::usage);
  EXPECT_EQ(hf({"wait", "--like", dir / "nope", dir / "f"}).exit_code, exit_code::no_input);
  EXPECT_EQ(hf({"wait", "--like", dir / "f", "--timeout", "soon", dir / "f"}).exit_code, exit_code::usage);
}

TEST(Wait, ViaBytesAndDigestProtocols) {
  TempDir dir;
  std::string data = pattern(300000, 17);
  spit(dir / "src", data);
  spit(dir / "reader", data);
  const std::string bin = cli_path();
  // Bytes: the command prints the content.
  EXPECT_EQ(hf({"wait", "--like", dir / "src", "--via", "cat \"$1\"", "--timeout", "5s", dir / "reader"}).exit_code, 0);
  // Digest lines: sha256sum style, holdfast digest (xxh128), ALG:HEX, ALG:HEX SIZE.
  for (std::string via : {std::string("sha256sum \"$1\""), bin + " digest \"$HOLDFAST_PATH\"",
                          bin + " digest --prefixed -a sha256 \"$1\" | cut -d' ' -f1",
                          "echo \"$(" + bin + " digest --prefixed \"$1\" | cut -d' ' -f1) $(stat -c %s \"$1\")\""}) {
    auto r = hf({"wait", "--like", dir / "src", "--via", via, "--via-prints", "digest", "--timeout", "5s",
                       dir / "reader"});
    EXPECT_EQ(r.exit_code, 0) << via << ": " << r.err;
  }
  spit(dir / "reader", data.substr(0, 1000));
  auto bytes = hf({"wait", "--like", dir / "src", "--via", "cat \"$1\"", "--timeout", "400ms", dir / "reader"});
  EXPECT_EQ(bytes.exit_code, exit_code::conflict);
  EXPECT_NE(bytes.err.find("size 1000/300000"), std::string::npos) << bytes.err;
  auto dig = hf({"wait", "--like", dir / "src", "--via", "sha256sum \"$1\"", "--timeout", "400ms", dir / "reader"});
  EXPECT_EQ(dig.exit_code, exit_code::conflict);
  EXPECT_NE(dig.err.find("digest mismatch"), std::string::npos) << dig.err;
  // A failing reader command is "not yet", reported at the timeout.
  auto fail = hf({"wait", "--like", dir / "src", "--via", "echo unreachable >&2; exit 3", "--timeout", "400ms",
                        dir / "reader"});
  EXPECT_EQ(fail.exit_code, exit_code::conflict);
  EXPECT_NE(fail.err.find("via command exited 3: unreachable"), std::string::npos) << fail.err;
  // --via-prints digest rejects content.
  auto nodig = hf({"wait", "--like", dir / "src", "--via", "cat \"$1\"", "--via-prints", "digest", "--timeout",
                         "300ms", dir / "reader"});
  EXPECT_NE(nodig.err.find("did not print a digest"), std::string::npos) << nodig.err;
  // A content that merely looks like a digest line is still bytes with --via-prints bytes.
  std::string line = digest_bytes(DigestAlg::sha256, "zzz").hex + "  x\n";
  spit(dir / "src3", line);
  spit(dir / "reader3", line);
  EXPECT_EQ(hf({"wait", "--like", dir / "src3", "--via", "cat \"$1\"", "--via-prints", "bytes", "--timeout", "2s",
                      dir / "reader3"}).exit_code, 0);
}

TEST(Wait, ViaBecomesTrueLater) {
  TempDir dir;
  std::string data = pattern(5000, 18);
  spit(dir / "src", data);
  std::thread later([&] {
    std::this_thread::sleep_for(400ms);
    spit(dir / "reader", data);
  });
  auto t0 = mono_us();
  auto r = hf({"wait", "--like", dir / "src", "--via", "cat \"$1\"", "--interval", "100ms", "--timeout", "5s",
                     dir / "reader"});
  auto took = mono_us() - t0;
  later.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(took, 350000);
  // Ended by a poll, well before the 5 s timeout (a generous bound: a loaded machine is slow).
  EXPECT_LT(took, 4000000);
}

TEST(Wait, LibraryObserve) {
  TempDir dir;
  spit_durable(dir / "f", "hello");
  auto e = expected_from_file(dir / "f", {DigestAlg::xxh128});
  EXPECT_EQ(e.size, 5u);
  EXPECT_TRUE(observe(dir / "f", e, {}).matched);
  spit(dir / "f", "hellO");
  auto o = observe(dir / "f", e, {});
  EXPECT_FALSE(o.matched);
  EXPECT_NE(o.differs.find("digest mismatch"), std::string::npos);
  WaitOptions quick;
  quick.timeout = 200ms;
  quick.interval = 50ms;
  auto r = wait_for_content(dir / "f", e, quick);
  EXPECT_FALSE(r.matched);
  EXPECT_GE(r.checks, 2u);
}

}  // namespace

namespace {

TEST(Wait, ProgressLineOnlyOnATty) {
  TempDir dir;
  spit(dir / "src", std::string(20, 'a'));
  spit(dir / "dst", std::string(10, 'a'));
  auto plain = hf({"wait", "--like", dir / "src", "--timeout", "300ms", dir / "dst"});
  EXPECT_EQ(plain.err.find("waiting for"), std::string::npos) << plain.err;
  // script(1) gives the command a pseudo-terminal.
  auto tty = run({"script", "-qec", cli_path() + " wait --like " + (dir / "src") + " --timeout 600ms " + (dir / "dst"),
                  "/dev/null"});
  if (tty.exit_code == 127) GTEST_SKIP() << "no script(1)";
  EXPECT_NE(tty.out.find("waiting for " + (dir / "dst")), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("size 10/20"), std::string::npos) << tty.out;
}

TEST(Wait, FollowsSymlinkedPathEvents) {
  TempDir dir;
  TempDir other;
  std::string data = pattern(4096, 21);
  spit(dir / "src", data);
  spit(other / "real", "old");
  ASSERT_EQ(::symlink((other / "real").c_str(), (dir / "link").c_str()), 0);
  std::thread later([&] {
    std::this_thread::sleep_for(300ms);
    spit(other / "real", data);
  });
  auto t0 = mono_us();
  // A long interval: only an event on the target's directory can end this quickly.
  auto r = hf({"wait", "--like", dir / "src", "--interval", "5s", "--timeout", "10s", dir / "link"});
  auto took = mono_us() - t0;
  later.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Before the first 5 s poll: only the inotify event can explain it.
  EXPECT_LT(took, 4500000);
}

}  // namespace

namespace {

TEST(Wait, CatchesAnFsyncThatLies) {
  if (auto why = FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  FaultFs fs("delay_data=600,fsync_lies");
  TempDir dir;
  std::string data = pattern(50000, 22);
  spit(dir / "src", data);
  // write "succeeds" (its fsyncs lie), yet the reader gets the bytes only ~600 ms later.
  ASSERT_EQ(hf({"write", fs / "cfg"}, data).exit_code, 0);
  int64_t written = mono_us();
  auto r = hf({"wait", "--like", dir / "src", "--interval", "100ms", "--timeout", "10s", fs / "cfg"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(mono_us() - written, 500000) << "wait trusted the lying fsync";
  EXPECT_EQ(slurp(fs / "cfg"), data);
}

}  // namespace
