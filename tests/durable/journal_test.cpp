// The pending-write journal: `write --record` then `wait --pending` clears exactly what matches.
#include <stdlib.h>

#include <algorithm>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;

namespace {

class Journal : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("HOLDFAST_JOURNAL", journal.c_str(), 1); }
  void TearDown() override { ::unsetenv("HOLDFAST_JOURNAL"); }
  TempDir dir;
  std::string journal = dir / "state/pending.jsonl";
};

TEST_F(Journal, PendingClearsOnlyWhatMatches) {
  for (int i = 0; i < 4; ++i) {
    auto r = hf({"write", "--record", dir / ("f" + std::to_string(i))}, pattern(1000 + static_cast<size_t>(i), static_cast<uint64_t>(i)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  auto entries = journal_read(journal);
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].path, dir / "f0");  // absolute
  EXPECT_EQ(entries[2].size, 1002u);
  // The reader (its own copy under reader/, named as the host does under dir) does not see f1
  // and f3 as written: bytes not landed there yet.
  ASSERT_EQ(::mkdir((dir / "reader").c_str(), 0755), 0);
  for (int i = 0; i < 4; ++i) spit(dir / ("reader/f" + std::to_string(i)), pattern(1000 + static_cast<size_t>(i), static_cast<uint64_t>(i)));
  spit(dir / "reader/f1", "something else");
  spit(dir / "reader/f3", pattern(1003, 99));
  const std::vector<std::string> via{"--via", "cat \"$1\"", "--via-map", dir.path() + "=" + (dir / "reader")};
  auto args = [&](std::vector<std::string> a) {
    a.insert(a.end(), via.begin(), via.end());
    return a;
  };
  auto r = hf(args({"wait", "--pending", "--timeout", "500ms", "--interval", "100ms", "--json"}));
  EXPECT_EQ(r.exit_code, exit_code::conflict);
  EXPECT_NE(r.err.find("2 of 4 pending writes still differ"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dir / "f1"), std::string::npos);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["cleared"].size(), 2u);
  EXPECT_EQ(j["remaining"].size(), 2u);
  entries = journal_read(journal);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].path, dir / "f1");
  EXPECT_EQ(entries[1].path, dir / "f3");
  // Restore f1 only: one left.
  spit(dir / "reader/f1", pattern(1001, 1));
  EXPECT_EQ(hf(args({"wait", "--pending", "--timeout", "300ms"})).exit_code, exit_code::conflict);
  ASSERT_EQ(journal_read(journal).size(), 1u);
  // Restore f3 while waiting: the gate opens, the journal is empty.
  std::thread fix([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    spit(dir / "reader/f3", pattern(1003, 3));
  });
  auto ok = hf(args({"wait", "--pending", "--interval", "100ms", "--timeout", "10s"}));
  fix.join();
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(journal_read(journal).empty());
  // Nothing pending: done at once.
  EXPECT_EQ(hf({"wait", "--pending", "--timeout", "1s"}).exit_code, 0);
}

TEST_F(Journal, ViaAppliesToEveryEntry) {
  ASSERT_EQ(hf({"write", "--record", dir / "a"}, "alpha").exit_code, 0);
  ASSERT_EQ(hf({"write", "--journal", journal, dir / "b"}, "beta").exit_code, 0);
  auto r = hf({"wait", "--pending", "--via", "cat \"$1\"", "--timeout", "2s"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(journal_read(journal).empty());
}

TEST_F(Journal, RewriteOfSamePathSupersedes) {
  ASSERT_EQ(hf({"write", "--record", dir / "a"}, "v1").exit_code, 0);
  ASSERT_EQ(hf({"write", "--record", dir / "a"}, "v2").exit_code, 0);
  auto e = journal_read(journal);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].size, 2u);
  EXPECT_EQ(e[0].digest, digest_bytes(DigestAlg::xxh128, "v2"));
}

TEST_F(Journal, ConcurrentRecordersLoseNothing) {
  StartGun gun;
  std::vector<pid_t> kids;
  for (int p = 0; p < 6; ++p) {
    kids.push_back(fork_child([&, p] {
      gun.wait();
      for (int k = 0; k < 15; ++k) {
        WriteOptions o;
        o.record = true;
        o.sync = false;
        o.journal = journal;
        atomic_write(dir / ("p" + std::to_string(p) + "_" + std::to_string(k)), "x", o);
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t k : kids) EXPECT_EQ(wait_child(k), 0);
  EXPECT_EQ(journal_read(journal).size(), 90u);
  auto names = list_dir(dir / "state");
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"pending.jsonl", "pending.jsonl.lock"}));
}

TEST_F(Journal, MalformedLinesAreSkipped) {
  ASSERT_EQ(hf({"write", "--record", dir / "a"}, "alpha").exit_code, 0);
  std::string text = slurp(journal);
  spit(journal, "garbage\n{\"path\":1}\n" + text + "{\"truncated\n");
  EXPECT_EQ(journal_read(journal).size(), 1u);
}

TEST(JournalPath, DefaultsFollowXdg) {
  pid_t pid = fork_child([] {
    ::unsetenv("HOLDFAST_JOURNAL");
    ::setenv("XDG_STATE_HOME", "/x/state", 1);
    if (default_journal_path() != "/x/state/holdfast/pending.jsonl") return 1;
    ::unsetenv("XDG_STATE_HOME");
    ::setenv("HOME", "/home/u", 1);
    if (default_journal_path() != "/home/u/.local/state/holdfast/pending.jsonl") return 2;
    ::unsetenv("HOME");
    if (::geteuid() == 0 && default_journal_path() != "/var/lib/holdfast/pending.jsonl") return 3;
    ::setenv("HOLDFAST_JOURNAL", "/j", 1);
    if (default_journal_path() != "/j") return 4;
    return 0;
  });
  EXPECT_EQ(wait_child(pid), 0);
}

}  // namespace
