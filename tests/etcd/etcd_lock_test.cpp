// EtcdLock against a real etcd (Debian's etcd-server, started by the test).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>

#include "etcd/etcd_cluster.hpp"

namespace holdfast {
namespace {

using testing::EtcdCluster;
using namespace std::chrono_literals;

#define REQUIRE_ETCD() \
  if (!testing::etcd_available()) GTEST_SKIP() << "/usr/bin/etcd is not installed (deps: etcd-server)"

int rounds(int normal) {
  if (std::getenv("HOLDFAST_SOAK") != nullptr) return 1000;
#ifdef HOLDFAST_SANITIZED
  return normal / 5;
#else
  return normal;
#endif
}

// A resource that checks fencing tokens: it remembers the highest token it accepted and refuses
// lower ones (under its own flock, as a storage server would under its own lock).
class FencedFile {
 public:
  explicit FencedFile(std::string path) : path_(std::move(path)) {}
  // True if `token` was accepted (>= the highest accepted so far).
  bool write(uint64_t token) const {
    int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    ::flock(fd, LOCK_EX);
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    uint64_t last = n > 0 ? std::strtoull(buf, nullptr, 10) : 0;
    bool ok = token >= last;
    if (ok) {
      std::string s = std::to_string(token) + "\n";
      ::ftruncate(fd, 0);
      ::pwrite(fd, s.data(), s.size(), 0);
    }
    ::close(fd);
    return ok;
  }

 private:
  std::string path_;
};

TEST(EtcdUrl, ParsesEndpointsAndPrefix) {
  auto o = parse_etcd_url("etcd://127.0.0.1:2379,10.0.0.2:2380/locks/app/");
  EXPECT_EQ(o.endpoints, (std::vector<std::string>{"127.0.0.1:2379", "10.0.0.2:2380"}));
  EXPECT_EQ(o.prefix, "locks/app");
  EXPECT_THROW(parse_etcd_url("etcd:///x"), Error);
  EXPECT_THROW(parse_etcd_url("etcd://host/x"), Error);
  EXPECT_THROW(parse_etcd_url("http://h:1/x"), Error);
}

TEST(EtcdLock, TokensAreCreateRevisionsAndStrictlyIncrease) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  o.ttl = 5s;
  uint64_t last = 0;
  for (int i = 0; i < 3; ++i) {
    auto lock = EtcdLock::acquire(o, "name", "{}", false, std::nullopt);
    ASSERT_TRUE(lock);
    EXPECT_GT(lock->token(), last);
    last = lock->token();
    auto h = inspect_etcd_holder(o, "name");
    EXPECT_TRUE(h.held);
    EXPECT_EQ(h.token, lock->token());
    EXPECT_EQ(h.key, lock->key());
    EXPECT_EQ(h.record, "{}");
    EXPECT_GT(h.ttl_remaining, 0);
    lock->release();
    EXPECT_FALSE(inspect_etcd_holder(o, "name").held);
  }
}

TEST(EtcdLock, NonblockAndDeadlineGiveUpAndLeaveNoKey) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  auto held = EtcdLock::acquire(o, "n", "a", false, std::nullopt);
  ASSERT_TRUE(held);
  EXPECT_FALSE(EtcdLock::acquire(o, "n", "b", true, std::nullopt));
  EXPECT_FALSE(EtcdLock::acquire(o, "n", "c", false, std::chrono::steady_clock::now() + 300ms));
  auto h = inspect_etcd_holder(o, "n");
  EXPECT_EQ(h.waiters, 0u);  // the ones that gave up revoked their leases
  EXPECT_EQ(h.token, held->token());
}

TEST(EtcdLock, ReleaseIsGuardedOnTheCreateRevision) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  auto first = EtcdLock::acquire(o, "n", "a", false, std::nullopt);
  ASSERT_TRUE(first);
  // Someone replaces our key (same name, new create revision): our release must not delete it.
  etcd::Client c(o);
  const auto key64 = etcd::base64_encode(first->key());
  c.call("/v3/kv/deleterange", {{"key", key64}});
  c.call("/v3/kv/put", {{"key", key64}, {"value", etcd::base64_encode("newer")}});
  first->release();
  auto r = c.call("/v3/kv/range", {{"key", key64}});
  ASSERT_TRUE(r.contains("kvs"));
  EXPECT_EQ(etcd::base64_decode(r["kvs"][0].value("value", "")), "newer");
}

// 8 processes on a 3-node cluster, 1,000 grants: never two holders at once, and tokens accepted by a fenced
// resource in grant order (none refused).
TEST(EtcdLock, EightProcessesOnThreeNodesNeverOverlapAndTokensIncrease) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  testing::TempDir dir;
  FencedFile resource(dir / "resource");
  const int per = std::max(2, rounds(1000) / 8);  // the issue: 1,000 grants among 8 processes
  auto* shared = static_cast<std::atomic<int>*>(testing::shared_memory(sizeof(std::atomic<int>) * 4));
  std::atomic<int>& inside = shared[0];
  std::atomic<int>& overlaps = shared[1];
  std::atomic<int>& refused = shared[2];
  std::atomic<int>& grants = shared[3];
  testing::StartGun gun;
  std::vector<pid_t> pids;
  for (int w = 0; w < 8; ++w) {
    pids.push_back(testing::fork_child([&, w] {
      gun.wait();
      auto o = etcd.options("contend");
      // Each worker talks to a different member first.
      std::rotate(o.endpoints.begin(), o.endpoints.begin() + w % 3, o.endpoints.end());
      try {
        for (int i = 0; i < per; ++i) {
          auto lock = EtcdLock::acquire(o, "x", "w", false, std::nullopt);
          if (!lock) return 3;
          if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
          if (!resource.write(lock->token())) refused.fetch_add(1);
          grants.fetch_add(1);
          inside.fetch_sub(1);
          lock->release();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", w, e.what());
        return 2;
      }
      return 0;
    }));
  }
  gun.release();
  for (pid_t p : pids) EXPECT_EQ(testing::wait_child(p), 0);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(grants.load(), per * 8);
  testing::free_shared_memory(shared, sizeof(std::atomic<int>) * 4);
}

// A member that is frozen (SIGSTOP: it accepts connections and never answers) is the first
// endpoint the keepalive tries. The renewal's budget is what is left of the lease's validity; it
// must reach a live member within it, not spend all of it waiting on the frozen one (the lease
// was then declared lost under a perfectly healthy majority: the leader-kill test's failure).
TEST(EtcdLock, KeepaliveFailsOverPastAFrozenMemberInTime) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  auto leader = etcd.leader();
  ASSERT_TRUE(leader);
  const size_t frozen = (*leader + 1) % 3;
  auto o = etcd.options("t");
  std::rotate(o.endpoints.begin(), o.endpoints.begin() + static_cast<long>(frozen), o.endpoints.end());
  o.ttl = 10s;
  o.request_timeout = 10s;
  etcd.stop_member(frozen);  // before the grant: every new client starts with the frozen member
  auto lock = EtcdLock::acquire(o, "n", "", false, std::nullopt);
  ASSERT_TRUE(lock);
  const auto first_valid_until = lock->valid_until();
  // Synchronise on the lease's state: renewed (validity moved on) or lost. The limit catches a hang.
  const auto give_up = std::chrono::steady_clock::now() + 120s;
  while (!lock->lost() && lock->valid_until() == first_valid_until && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_FALSE(lock->lost()) << lock->lost_reason();
  EXPECT_GT(lock->valid_until(), first_valid_until);
  etcd.cont_member(frozen);
}

// The same contention while the cluster misbehaves: the leader is SIGKILLed (then restarted),
// then a member is SIGSTOPped (then resumed). Still no overlap, no refused token, and every
// worker finishes (failover to the live members; a frozen member cannot hold a waiter forever).
TEST(EtcdLock, ContentionSurvivesLeaderKillAndAFrozenMember) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  testing::TempDir dir;
  FencedFile resource(dir / "resource");
  auto* shared = static_cast<std::atomic<int>*>(testing::shared_memory(sizeof(std::atomic<int>) * 5));
  std::atomic<int>& inside = shared[0];
  std::atomic<int>& overlaps = shared[1];
  std::atomic<int>& refused = shared[2];
  std::atomic<int>& grants = shared[3];
  std::atomic<int>& stop = shared[4];
  testing::StartGun gun;
  std::vector<pid_t> pids;
  for (int w = 0; w < 8; ++w) {
    pids.push_back(testing::fork_child([&, w] {
      gun.wait();
      auto o = etcd.options("faults");
      std::rotate(o.endpoints.begin(), o.endpoints.begin() + w % 3, o.endpoints.end());
      o.request_timeout = 10s;  // an election under load can take seconds
      try {
        while (stop.load() == 0) {
          auto lock = EtcdLock::acquire(o, "x", "w", false, std::nullopt);
          if (!lock) return 3;
          if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
          if (!resource.write(lock->token())) refused.fetch_add(1);
          grants.fetch_add(1);
          inside.fetch_sub(1);
          lock->release();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", w, e.what());
        return 2;
      }
      return 0;
    }));
  }
  gun.release();
  auto grants_reach = [&](int n) {
    const auto give_up = std::chrono::steady_clock::now() + 300s;  // a hang, not a timing
    while (grants.load() < n) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  };
  EXPECT_TRUE(grants_reach(20));
  auto leader = etcd.leader();
  ASSERT_TRUE(leader);
  etcd.kill_member(*leader);
  EXPECT_TRUE(grants_reach(grants.load() + 20)) << "no progress after the leader was killed";
  etcd.restart(*leader);
  const size_t frozen = (*leader + 1) % 3;
  etcd.stop_member(frozen);
  EXPECT_TRUE(grants_reach(grants.load() + 20)) << "no progress with a frozen member";
  etcd.cont_member(frozen);
  EXPECT_TRUE(grants_reach(grants.load() + 8));
  stop.store(1);
  for (pid_t p : pids) EXPECT_EQ(testing::wait_child(p), 0);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(refused.load(), 0);
  testing::free_shared_memory(shared, sizeof(std::atomic<int>) * 5);
}

// etcd#9921: a waiter whose lease expired while it waited must never be told it holds the lock.
TEST(EtcdLock, AWaiterWhoseLeaseExpiredIsNeverGranted) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  o.ttl = 2s;
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t waiter = testing::fork_child([&] {
    ::close(go[1]);
    char b;
    if (::read(go[0], &b, 1) != 1) return 5;
    try {
      auto lock = EtcdLock::acquire(o, "n", "waiter", false, std::nullopt);
      return lock ? 0 : 4;  // 0 = granted: the bug
    } catch (const EtcdError& e) {
      return e.kind() == EtcdError::Kind::lost ? 90 : 3;
    }
  });
  ::close(go[0]);
  {
    auto holder = EtcdLock::acquire(o, "n", "holder", false, std::nullopt);
    ASSERT_TRUE(holder);
    ASSERT_EQ(::write(go[1], "g", 1), 1);
    ::close(go[1]);
    etcd::Client c(o);
    // Wait (on etcd's state) until the waiter is queued, then freeze it until its lease is gone.
    int64_t waiter_lease = 0;
    for (int i = 0; i < 6000 && waiter_lease == 0; ++i) {
      auto h = inspect_etcd_holder(o, "n");
      if (h.waiters == 1) {
        auto r = c.call("/v3/kv/range", {{"key", etcd::base64_encode("t/n/")},
                                          {"range_end", etcd::base64_encode(etcd::prefix_end("t/n/"))},
                                          {"sort_target", "CREATE"}, {"sort_order", "DESCEND"}, {"limit", "1"}});
        waiter_lease = etcd::int_field(r["kvs"][0], "lease");
      } else {
        std::this_thread::sleep_for(10ms);
      }
    }
    ASSERT_NE(waiter_lease, 0);
    ASSERT_EQ(::kill(waiter, SIGSTOP), 0);
    for (int i = 0; i < 6000; ++i) {
      auto t = c.call("/v3/lease/timetolive", {{"ID", std::to_string(waiter_lease)}});
      if (etcd::int_field(t, "TTL") < 0) break;  // -1: expired (0 is "under a second left")
      std::this_thread::sleep_for(50ms);
    }
    holder->release();
  }
  ::kill(waiter, SIGCONT);
  EXPECT_EQ(testing::wait_child(waiter), 90);
}

// The read-back itself: the waiter's lease is revoked (by an operator, or expired on the server
// while the waiter's own clock says it is fine) and the holder releases at once, before the
// waiter's next renewal could notice. The wait ends on the predecessor's deletion; only the
// read-back of our key stands between that and a false grant.
TEST(EtcdLock, AWaiterWhoseLeaseWasRevokedIsNeverGranted) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  o.ttl = 30s;  // its next renewal is 10 s away: the waiter's session cannot notice in time
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t waiter = testing::fork_child([&] {
    ::close(go[1]);
    char b;
    if (::read(go[0], &b, 1) != 1) return 5;
    try {
      auto lock = EtcdLock::acquire(o, "n", "waiter", false, std::nullopt);
      return lock ? 0 : 4;  // 0 = granted: the bug
    } catch (const EtcdError& e) {
      return e.kind() == EtcdError::Kind::lost ? 90 : 3;
    }
  });
  ::close(go[0]);
  auto holder = EtcdLock::acquire(o, "n", "holder", false, std::nullopt);
  ASSERT_TRUE(holder);
  ASSERT_EQ(::write(go[1], "g", 1), 1);
  ::close(go[1]);
  etcd::Client c(o);
  int64_t waiter_lease = 0;
  for (int i = 0; i < 6000 && waiter_lease == 0; ++i) {
    auto r = c.call("/v3/kv/range", {{"key", etcd::base64_encode("t/n/")},
                                      {"range_end", etcd::base64_encode(etcd::prefix_end("t/n/"))},
                                      {"sort_target", "CREATE"}, {"sort_order", "DESCEND"}, {"limit", "1"}});
    if (etcd::int_field(r, "count") == 2) {
      waiter_lease = etcd::int_field(r["kvs"][0], "lease");
    } else {
      std::this_thread::sleep_for(10ms);
    }
  }
  ASSERT_NE(waiter_lease, 0);
  c.call("/v3/lease/revoke", {{"ID", std::to_string(waiter_lease)}});
  holder->release();
  EXPECT_EQ(testing::wait_child(waiter), 90);
}

TEST(EtcdLock, UnreachableEndpointsFailWithUnavailable) {
  auto ports = testing::free_ports(2);
  auto o = parse_etcd_url(fmt::format("etcd://127.0.0.1:{},127.0.0.1:{}/p", ports[0], ports[1]));
  o.request_timeout = 500ms;
  try {
    EtcdLock::acquire(o, "n", "", false, std::nullopt);
    FAIL() << "acquired without etcd";
  } catch (const EtcdError& e) {
    EXPECT_EQ(e.kind(), EtcdError::Kind::unreachable);
    EXPECT_EQ(e.exit_code(), exit_code::unavailable);
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace holdfast
