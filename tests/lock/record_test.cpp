// The holder record's hand-written JSON must parse back (with nlohmann) to the same record.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/hex.hpp"
#include "holdfast/lock.hpp"

namespace holdfast {
namespace {

// State file names, verdict file names and mount keys are built with hex() where they were built
// with printf: files already on disk must keep their names (a holder of an older build keeps its
// record and tokens there).
TEST(Hex, FormatsAsPrintfDoes) {
  std::vector<uint64_t> values = {0, 1, 9, 10, 15, 16, 0xabc, 0xffffffffULL, 0x100000000ULL, ~0ULL};
  for (uint64_t v = 1; v != 0 && values.size() < 200; v = v * 7 + 3) values.push_back(v);
  for (uint64_t v : values) {
    char plain[32], padded[32];
    std::snprintf(plain, sizeof plain, "%llx", static_cast<unsigned long long>(v));
    std::snprintf(padded, sizeof padded, "%016llx", static_cast<unsigned long long>(v));
    EXPECT_EQ(hex(v), plain);
    EXPECT_EQ(hex(v, 16), padded);
  }
  EXPECT_EQ(hex(0xabc, 2), "abc");
}

HolderRecord sample() {
  HolderRecord r;
  r.processes = {{4242, 96412, "f63de502-9bd1-4522-9452-b57274632256", "build-7"},
                 {4243, 18446744073709551615ULL, "boot", "host \"quoted\" \\ back"}};
  r.processes[0].machine_id = "5d1c0e3bd8a84c2f9b6e0f4a7c2d1e90";  // the second has none (older writer)
  r.token = 7710624558805417987ULL;
  r.nonce = 18446744073709551615ULL;
  r.backend = Backend::link;
  r.mode = LockMode::exclusive;
  r.acquired_unix_ns = 1795269680448845894;
  r.command = {"sh", "-c", "printf 'a\tb\n' \"$x\"", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92", std::string("nul\0x", 5),
               "\x01\x1f\x7f"};
  r.lease_ms = 1500;
  return r;
}

TEST(HolderRecord, RoundTripsThroughAJsonParser) {
  HolderRecord r = sample();
  std::string text = r.to_json();
  ASSERT_EQ(text.back(), '\n');
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << "a record is one line";
  ASSERT_TRUE(nlohmann::json::accept(text)) << text;
  auto back = HolderRecord::parse(text);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->processes, r.processes);
  EXPECT_EQ(back->token, r.token);
  EXPECT_EQ(back->nonce, r.nonce);
  EXPECT_EQ(back->backend, r.backend);
  EXPECT_EQ(back->mode, r.mode);
  EXPECT_EQ(back->acquired_unix_ns, r.acquired_unix_ns);
  EXPECT_EQ(back->command, r.command);
  EXPECT_EQ(back->lease_ms, r.lease_ms);
}

TEST(HolderRecord, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  HolderRecord r = sample();
  r.command = {"latin1 \xe9t\xe9", "truncated \xe2\x82", "lone \x80 continuation"};
  std::string text = r.to_json();
  ASSERT_TRUE(nlohmann::json::accept(text)) << "a record must always be valid JSON";
  auto back = HolderRecord::parse(text);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->command[0], "latin1 \xef\xbf\xbdt\xef\xbf\xbd");
  EXPECT_EQ(back->command[1], "truncated \xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(back->command[2], "lone \xef\xbf\xbd continuation");
}

TEST(HolderRecord, PaddedRecordStillParses) {
  std::string text = sample().to_json();
  text.pop_back();
  text += std::string(100, ' ') + "\n";
  EXPECT_TRUE(HolderRecord::parse(text));
}

TEST(HolderRecord, TruncatedOrForeignRecordsDoNotParse) {
  std::string text = sample().to_json();
  for (size_t cut : {size_t{0}, size_t{1}, text.size() / 2, text.size() - 3}) {
    EXPECT_FALSE(HolderRecord::parse(text.substr(0, cut))) << cut;
  }
  EXPECT_FALSE(HolderRecord::parse(R"({"holdfast":2,"processes":[]})"));
  EXPECT_FALSE(HolderRecord::parse(R"({"holdfast":1,"processes":[],"token":1,"nonce":1,"backend":"ofd",)"
                                   R"("mode":"exclusive","acquired_unix_ns":1,"command":[]})"))
      << "a record names at least one process";
  EXPECT_FALSE(HolderRecord::parse("12345\n")) << "a pid alone (a classic pidfile) is not a record";
}

// The process list as text, for readable failures.
std::string who(const std::vector<ProcessIdentity>& processes) {
  std::string out;
  for (const auto& p : processes) {
    out += std::to_string(p.pid) + "/" + std::to_string(p.start_time) + "/" + p.boot_id + "/" + p.host + "/" +
           p.machine_id + ";";
  }
  return out;
}

// A record file is rewritten in place while others may read it: a dotlock gets its token after
// it is visible (token 0 first), and a holder added later rewrites it longer. The page cache
// does not make a write atomic for a concurrent reader: it may read the new bytes up to any
// point and the old ones after it. Whatever such a reader parses must name the holder that is
// writing, or fail to parse (held: fail closed). A mix that parsed with another process list
// made a live holder's dotlock look stale and reclaimable: two holders at once.
// Every such mix of `before` and its rewrite `after_unpadded`.
std::vector<std::string> torn_mixes(const std::string& before, const std::string& after_unpadded) {
  // As write_padded writes it over `before`: padded with spaces to the old size, newline last.
  std::string after = after_unpadded;
  if (after.size() < before.size()) {
    after.pop_back();
    after.resize(before.size() - 1, ' ');
    after.push_back('\n');
  }
  std::vector<std::string> mixes;
  for (size_t k = 0; k <= after.size(); ++k) {
    // The writer has copied the first k bytes; the reader sees the old ones after them (and, if
    // the file has not grown yet, the old size).
    std::string mix = after.substr(0, k);
    if (k < before.size()) mix += before.substr(k);
    mixes.push_back(std::move(mix));
  }
  return mixes;
}

TEST(HolderRecord, AReaderOfATokenBeingIssuedInPlaceSeesTheHolderOrNothing) {
  HolderRecord record = sample();
  record.token = 0;  // as a dotlock appears
  const std::string before = record.to_json();
  for (uint64_t token : std::vector<uint64_t>{1, 42, uint64_t{1} << 32 | 7, 7710624558805417987ULL, ~uint64_t{0}}) {
    record.token = token;
    const std::string after = record.to_json();
    EXPECT_EQ(after.size(), before.size()) << "issuing the token must not move the bytes after it";
    for (const std::string& mix : torn_mixes(before, after)) {
      auto seen = HolderRecord::parse(mix);
      if (seen) EXPECT_EQ(who(seen->processes), who(record.processes)) << mix;
    }
  }
}

TEST(HolderRecord, AReaderOfAHolderBeingAddedInPlaceSeesTheFirstHolderOrNothing) {
  HolderRecord record = sample();
  record.processes.resize(1);
  const std::string before = record.to_json();
  record.processes.push_back({777, 123, "another-boot", "another-host"});
  for (const std::string& mix : torn_mixes(before, record.to_json())) {
    auto seen = HolderRecord::parse(mix);
    if (seen) {
      ASSERT_FALSE(seen->processes.empty());
      EXPECT_EQ(who({seen->processes.front()}), who({record.processes.front()})) << mix;
    }
  }
}

}  // namespace
}  // namespace holdfast
