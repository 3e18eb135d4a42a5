// `holdfast write --fence TOKEN` / WriteOptions::fence: a write whose token is lower than the
// highest the path has accepted is refused (exit 79, target untouched), atomically against every
// other fenced writer, across process restarts and replacement of the file by other programs.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;

namespace {

// Each test with a fresh state directory (HOLDFAST_STATE_DIR) inside its temporary directory.
class FencedWrite : public ::testing::Test {
 protected:
  std::string state() const { return state_dir_.path(); }
  // The fence records in the state directory.
  std::vector<std::string> records() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(state())) {
      if (e.path().string().ends_with(".write-fence")) out.push_back(e.path().string());
    }
    return out;
  }
  static std::string xattr_of(const std::string& path) {
    char buf[64];
    ssize_t n = ::getxattr(path.c_str(), "user.holdfast.fence", buf, sizeof buf);
    return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
  }

  TempDir dir;
  StateDir state_dir_{dir / "state"};  // HOLDFAST_STATE_DIR, inherited by the CLI children
};

WriteOptions fenced(uint64_t token, bool sync = true) {
  WriteOptions o;
  o.fence = token;
  o.sync = sync;
  return o;
}

TEST_F(FencedWrite, LowerTokenIsRefusedEqualAndHigherAccepted) {
  const std::string f = dir / "data";
  auto r = hf({"write", "--fence", "5", f}, "five");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = hf({"write", "--fence", "3", f}, "three");
  EXPECT_EQ(r.exit_code, exit_code::fenced);
  EXPECT_EQ(r.exit_code, 79);
  EXPECT_NE(r.err.find(f), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("fencing token 3 is lower than 5"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(slurp(f), "five");
  // The same holder writing twice.
  r = hf({"write", "--fence", "5", f}, "five again");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(f), "five again");
  r = hf({"write", "--fence", "7", f}, "seven");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(f), "seven");
  EXPECT_EQ(xattr_of(f), "7");
  EXPECT_EQ(accepted_fence(f), 7u);
  // No temp file left behind by the refusal; nothing beside the file.
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"data", "state"}));
}

TEST_F(FencedWrite, BadTokensAreUsageErrors) {
  const std::string f = dir / "data";
  for (const std::string bad : {"", "-1", "12a", "0x10", "18446744073709551616", " 5"}) {
    auto r = hf({"write", "--fence", bad, f}, "x");
    EXPECT_EQ(r.exit_code, 64) << bad << ": " << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(f));
  auto r = hf({"write", "--fence", "18446744073709551615", f}, "max");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(FencedWrite, FenceFromEnvReadsTheLockToken) {
  const std::string f = dir / "data";
  ::unsetenv("HOLDFAST_TOKEN");
  auto r = hf({"write", "--fence-from-env", f}, "x");
  EXPECT_EQ(r.exit_code, 64) << r.err;
  EXPECT_NE(r.err.find("HOLDFAST_TOKEN"), std::string::npos) << r.err;
  // Under a real lock: each grant's token is higher than the last, so both writes land.
  for (const char* content : {"first", "second"}) {
    r = hf({"lock", dir / "lockfile", "--", cli_path(), "write", "--fence-from-env", f}, content);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(slurp(f), content);
  }
  const uint64_t second = accepted_fence(f);
  EXPECT_GT(second, 0u);
  // An ex-holder with an older token (one lower than the last grant) is refused.
  r = hf({"write", "--fence", std::to_string(second - 1), f}, "stale");
  EXPECT_EQ(r.exit_code, 79) << r.err;
  EXPECT_EQ(slurp(f), "second");
}

// The fence survives the file being replaced by a program that is not holdfast (the xattr goes
// with the old inode; the state record remains), and the state record being lost (the xattr on the
// file remains), each in a fresh process.
TEST_F(FencedWrite, SurvivesReplacementByOthersAndLossOfTheRecord) {
  const std::string f = dir / "data";
  ASSERT_EQ(hf({"write", "--fence", "10", f}, "ten").exit_code, 0);
  ASSERT_EQ(xattr_of(f), "10");

  spit(dir / "other", "replaced by mv");
  ASSERT_EQ(::rename((dir / "other").c_str(), f.c_str()), 0);
  ASSERT_EQ(xattr_of(f), "");
  auto r = hf({"write", "--fence", "9", f}, "nine");
  EXPECT_EQ(r.exit_code, 79) << r.err;
  EXPECT_EQ(slurp(f), "replaced by mv");

  ASSERT_EQ(hf({"write", "--fence", "11", f}, "eleven").exit_code, 0);
  auto recs = records();
  ASSERT_EQ(recs.size(), 1u);
  ASSERT_EQ(::unlink(recs[0].c_str()), 0);
  r = hf({"write", "--fence", "10", f}, "ten again");
  EXPECT_EQ(r.exit_code, 79) << r.err;
  EXPECT_EQ(slurp(f), "eleven");
  ASSERT_EQ(hf({"write", "--fence", "12", f}, "twelve").exit_code, 0);
  EXPECT_EQ(slurp(f), "twelve");
}

TEST_F(FencedWrite, CorruptRecordFailsClosed) {
  const std::string f = dir / "data";
  ASSERT_EQ(hf({"write", "--fence", "4", f}, "four").exit_code, 0);
  auto recs = records();
  ASSERT_EQ(recs.size(), 1u);
  spit(recs[0], "garbage\n");
  auto r = hf({"write", "--fence", "100", f}, "hundred");
  EXPECT_EQ(r.exit_code, 65) << r.err;
  EXPECT_NE(r.err.find(recs[0]), std::string::npos) << r.err;
  EXPECT_EQ(slurp(f), "four");
}

TEST_F(FencedWrite, UnfencedWriteKeepsTheFence) {
  const std::string f = dir / "data";
  ASSERT_EQ(hf({"write", "--fence", "8", f}, "eight").exit_code, 0);
  ASSERT_EQ(hf({"write", f}, "plain").exit_code, 0);
  EXPECT_EQ(xattr_of(f), "8");  // carried over like every xattr
  EXPECT_EQ(hf({"write", "--fence", "7", f}, "seven").exit_code, 79);
  EXPECT_EQ(slurp(f), "plain");
}

// A writer paused (SIGSTOP) after it took its token but before it commits, resumed after a newer
// holder wrote: refused, and the newer content stays.
TEST_F(FencedWrite, PausedWriterResumedAfterNewerWriteIsRefused) {
  const std::string f = dir / "data";
  ASSERT_EQ(hf({"write", "--fence", "1", f}, "initial").exit_code, 0);
  int in[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  pid_t old_holder = fork_child([&] {
    ::dup2(in[0], STDIN_FILENO);
    std::string cli = cli_path();
    ::execl(cli.c_str(), cli.c_str(), "write", "--fence", "2", f.c_str(), static_cast<char*>(nullptr));
    return 127;
  });
  ::close(in[0]);
  ASSERT_EQ(::write(in[1], "stale ", 6), 6);
  ASSERT_EQ(::kill(old_holder, SIGSTOP), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(old_holder, &status, WUNTRACED), old_holder);
  ASSERT_TRUE(WIFSTOPPED(status));

  ASSERT_EQ(hf({"write", "--fence", "3", f}, "newer").exit_code, 0);

  ASSERT_EQ(::kill(old_holder, SIGCONT), 0);
  ASSERT_EQ(::write(in[1], "data", 4), 4);
  ::close(in[1]);
  EXPECT_EQ(wait_child(old_holder), 79);
  EXPECT_EQ(slurp(f), "newer");
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"data", "state"}));
}

// Barrier race: each round, writers with distinct tokens commit at the same instant. The file
// must end with the highest token's content, every write refused must have had a lower token than
// one already accepted, and a reader watching the file never sees the token go down.
TEST_F(FencedWrite, ConcurrentWritersHighestTokenWins) {
#ifdef HOLDFAST_SANITIZED
  constexpr int kRounds = 4;
#else
  constexpr int kRounds = 15;
#endif
  constexpr int kWriters = 6;
  const std::string f = dir / "data";
  ASSERT_EQ(hf({"write", "--fence", "0", f}, "0").exit_code, 0);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> decreases{0};
  // Stopped and joined on every exit from the test body (an ASSERT returns early).
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread thread;
    ~Joiner() {
      stop = true;
      thread.join();
    }
  };
  {
    Joiner watcher{stop, std::thread([&] {
      uint64_t last = 0;
      while (!stop.load()) {
        std::string text = slurp(f);
        if (text.empty()) continue;
        uint64_t v = std::stoull(text);
        if (v < last) decreases.fetch_add(1);
        last = std::max(last, v);
      }
    })};

    struct Outcome {
      uint64_t token;
      int status;
    };
    for (int round = 1; round <= kRounds; ++round) {
      StartGun gun;
      std::vector<std::pair<uint64_t, pid_t>> writers;
      for (int w = 0; w < kWriters; ++w) {
        // Distinct tokens, in an order that differs per round.
        const uint64_t token = static_cast<uint64_t>(round) * 100 + static_cast<uint64_t>((w * 5 + round) % kWriters);
        pid_t pid = fork_child([&, token] {
          auto writer = AtomicWriter::open(f, fenced(token));
          writer.write(std::to_string(token));
          gun.wait();
          try {
            writer.commit();
          } catch (const Error& e) {
            return e.exit_code();
          }
          return 0;
        });
        writers.emplace_back(token, pid);
      }
      gun.release();
      std::vector<Outcome> outcomes;
      uint64_t max_token = 0;
      for (auto [token, pid] : writers) {
        outcomes.push_back({token, wait_child(pid)});
        max_token = std::max(max_token, token);
      }
      for (const auto& o : outcomes) {
        ASSERT_TRUE(o.status == 0 || o.status == exit_code::fenced) << "token " << o.token << " exit " << o.status;
        if (o.token == max_token) EXPECT_EQ(o.status, 0) << "the highest token was refused";
      }
      ASSERT_EQ(slurp(f), std::to_string(max_token)) << "round " << round;
      ASSERT_EQ(accepted_fence(f), max_token);
    }
  }  // the watcher stops here
  EXPECT_EQ(decreases.load(), 0u) << "a lower token replaced a higher one";
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"data", "state"}));
}

}  // namespace
