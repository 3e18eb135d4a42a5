// EtcdLock against a real etcd (Debian's etcd-server, started by the test).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <new>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "etcd/etcd_cluster.hpp"

namespace holdfast {
namespace {

using testing::EtcdCluster;
using namespace std::chrono_literals;

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

// Counters shared by contending worker processes (in shared memory).
struct ContentionCounters {
  std::atomic<int> inside, overlaps, refused, grants, stop;
};

// 8 worker processes contending for NAME "x" under `prefix`, each starting with a different
// member, until `more(i)` is false for its i-th grant. Each grant is checked for overlap and by a
// fenced resource. The destructor waits for the workers (their exit statuses go to statuses()).
class Contention {
 public:
  Contention(const EtcdCluster& etcd, const std::string& prefix, std::chrono::milliseconds request_timeout,
             const std::function<bool(const ContentionCounters&, int)>& more)
      : counters_(static_cast<ContentionCounters*>(testing::shared_memory(sizeof(ContentionCounters)))),
        resource_(dir_ / "resource") {
    new (counters_) ContentionCounters{};
    testing::StartGun gun;
    for (int w = 0; w < 8; ++w) {
      pids_.push_back(testing::fork_child([&, w] {
        gun.wait();
        auto o = etcd.options(prefix);
        std::rotate(o.endpoints.begin(), o.endpoints.begin() + w % 3, o.endpoints.end());
        o.request_timeout = request_timeout;
        try {
          for (int i = 0; more(*counters_, i); ++i) {
            auto lock = EtcdLock::acquire(o, "x", "w", false, std::nullopt);
            if (!lock) return 3;
            if (counters_->inside.fetch_add(1) != 0) counters_->overlaps.fetch_add(1);
            if (!resource_.write(lock->token())) counters_->refused.fetch_add(1);
            counters_->grants.fetch_add(1);
            counters_->inside.fetch_sub(1);
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
  }
  ~Contention() {
    join();
    testing::free_shared_memory(counters_, sizeof(ContentionCounters));
  }
  Contention(const Contention&) = delete;
  Contention& operator=(const Contention&) = delete;

  const ContentionCounters& counters() const { return *counters_; }
  void stop() { counters_->stop.store(1); }
  // Waits until `n` grants were made; false if that never happens (a hang, not a timing).
  bool grants_reach(int n) const {
    const auto give_up = std::chrono::steady_clock::now() + 300s;
    while (counters_->grants.load() < n) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  }
  // Waits for every worker; their exit statuses (0: finished without error).
  const std::vector<int>& join() {
    for (pid_t p : pids_) statuses_.push_back(testing::wait_child(p));
    pids_.clear();
    return statuses_;
  }

 private:
  ContentionCounters* counters_;
  testing::TempDir dir_;
  FencedFile resource_;
  std::vector<pid_t> pids_;
  std::vector<int> statuses_;
};

// 8 processes on a 3-node cluster, 1,000 grants (200 sanitized): never two holders at once, and
// tokens accepted by a fenced resource in grant order (none refused).
TEST(EtcdLock, EightProcessesOnThreeNodesNeverOverlapAndTokensIncrease) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  const int per = std::max(2, rounds(1000) / 8);
  Contention run(etcd, "contend", 5s, [per](const ContentionCounters&, int i) { return i < per; });
  for (int status : run.join()) EXPECT_EQ(status, 0);
  EXPECT_EQ(run.counters().overlaps.load(), 0);
  EXPECT_EQ(run.counters().refused.load(), 0);
  EXPECT_EQ(run.counters().grants.load(), per * 8);
}

// Waits for `lock`'s lease to be renewed (its validity moves on) or lost, and expects the first.
// Synchronised on the lease's state; the limit only catches a hang.
void expect_renewed_not_lost(const EtcdLock& lock) {
  const auto first_valid_until = lock.valid_until();
  const auto give_up = std::chrono::steady_clock::now() + 120s;
  while (!lock.lost() && lock.valid_until() == first_valid_until && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_FALSE(lock.lost()) << lock.lost_reason();
  EXPECT_GT(lock.valid_until(), first_valid_until);
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
  expect_renewed_not_lost(*lock);
  etcd.cont_member(frozen);
}

// A lease grant that fails over: the first member does not answer (frozen here; during an
// election a member without a leader holds a grant the same way) for longer than the lease's whole
// validity. The lease was created when the answering member received the grant, so it is fresh,
// and the lock must not be declared lost for the time spent before. (Counting from the call's
// start instead declared a waiter's healthy lease lost "not renewed in time (no answer)" right
// after the leader kill in ContentionSurvivesLeaderKillAndAFrozenMember.)
TEST(EtcdLock, AGrantThatFailedOverPastASilentMemberIsNotCountedAsLost) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  auto leader = etcd.leader();
  ASSERT_TRUE(leader);
  const size_t frozen = (*leader + 1) % 3;
  auto o = etcd.options("t");
  std::rotate(o.endpoints.begin(), o.endpoints.begin() + static_cast<long>(frozen), o.endpoints.end());
  o.ttl = 10s;
  o.request_timeout = 30s;  // its first attempt (a third: 10 s) outlasts the lease's validity (8 s)
  etcd.stop_member(frozen);
  auto lock = EtcdLock::acquire(o, "n", "", false, std::nullopt);
  ASSERT_TRUE(lock);
  expect_renewed_not_lost(*lock);
  etcd.cont_member(frozen);
}

// Every request asks for a member with a leader (Grpc-Metadata-hasleader): a member cut off from
// the others (here: the two others killed) answers "no leader" at once, so the client fails over,
// instead of holding the request until its time is spent. Without the header the lone member's
// answer never comes within the budget (the leader-kill contention test's "no member answering
// within 10 s" under load).
TEST(EtcdClient, AMemberWithoutALeaderSaysSoAtOnce) {
  REQUIRE_ETCD();
  EtcdCluster etcd(3);
  auto o = etcd.options("t");
  o.endpoints = {etcd.endpoint(0)};
  etcd.kill_member(1);
  etcd.kill_member(2);
  etcd::Client client(o);
  std::string last;
  // Until member 0 has noticed it has no leader (an election timeout): the bound only catches a hang.
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < give_up) {
    try {
      client.call("/v3/kv/range", {{"key", etcd::base64_encode("x")}}, 3s);
      last = "answered";
    } catch (const EtcdError& e) {
      last = e.what();
      if (last.find("no leader") != std::string::npos) break;
    }
  }
  EXPECT_NE(last.find("no leader"), std::string::npos) << last;
}

// The same contention while the cluster misbehaves: the leader is SIGKILLed (then restarted),
// then a member is SIGSTOPped (then resumed). Still no overlap, no refused token, and every
// worker finishes (failover to the live members; a frozen member cannot hold a waiter forever).
TEST(EtcdLock, ContentionSurvivesLeaderKillAndAFrozenMember) {
  REQUIRE_ETCD();
  // The waiter's lease lapse it once showed is fixed (AGrantThatFailedOverPastASilentMemberIsNotCountedAsLost).
  // It was soak-only after a worker's request (grant, txn) found no member answering within its
  // whole 10 s budget under a load average of ~9. Requests now require a member with a leader
  // (EtcdClient.AMemberWithoutALeaderSaysSoAtOnce), so a member without one answers at once and
  // the request fails over; back in every run after 20 consecutive passes at load 9-15 (two busy
  // loops on the 2 cores beside the other engineers' work). Under the sanitizers (several times
  // slower, every etcd member competing with the instrumented workers) it stays a soak: the other
  // etcd tests cover this code there.
#ifdef HOLDFAST_SANITIZED
  if (std::getenv("HOLDFAST_SOAK") == nullptr) GTEST_SKIP() << "sanitized build: soak only (HOLDFAST_SOAK=1)";
#endif
  EtcdCluster etcd(3);
  // request timeout 10 s: an election under load can take seconds
  Contention run(etcd, "faults", 10s, [](const ContentionCounters& c, int) { return c.stop.load() == 0; });
  const auto& grants = run.counters().grants;
  EXPECT_TRUE(run.grants_reach(20));
  auto leader = etcd.leader();
  ASSERT_TRUE(leader);
  etcd.kill_member(*leader);
  EXPECT_TRUE(run.grants_reach(grants.load() + 20)) << "no progress after the leader was killed";
  etcd.restart(*leader);
  const size_t frozen = (*leader + 1) % 3;
  etcd.stop_member(frozen);
  EXPECT_TRUE(run.grants_reach(grants.load() + 20)) << "no progress with a frozen member";
  etcd.cont_member(frozen);
  EXPECT_TRUE(run.grants_reach(grants.load() + 8));
  run.stop();
  for (int status : run.join()) EXPECT_EQ(status, 0);
  EXPECT_EQ(run.counters().overlaps.load(), 0);
  EXPECT_EQ(run.counters().refused.load(), 0);
}

// A process that waits for NAME "n" (prefix "t") once it is told to start (started()), and exits
// 0 if it was granted (the etcd#9921 bug), 90 if it was refused because its lease was lost.
class Waiter {
 public:
  explicit Waiter(const EtcdOptions& o) {
    if (::pipe(go_) != 0) throw std::runtime_error("pipe");
    pid_ = testing::fork_child([&] {
      ::close(go_[1]);
      char b;
      if (::read(go_[0], &b, 1) != 1) return 5;
      try {
        auto lock = EtcdLock::acquire(o, "n", "waiter", false, std::nullopt);
        return lock ? 0 : 4;  // 0 = granted: the bug
      } catch (const EtcdError& e) {
        return e.kind() == EtcdError::Kind::lost ? 90 : 3;
      }
    });
    ::close(go_[0]);
  }
  ~Waiter() {
    if (go_[1] >= 0) ::close(go_[1]);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::kill(pid_, SIGCONT);
      testing::wait_child(pid_);
    }
  }
  Waiter(const Waiter&) = delete;
  Waiter& operator=(const Waiter&) = delete;

  void start() {
    if (::write(go_[1], "g", 1) != 1) throw std::runtime_error("write");
    ::close(go_[1]);
    go_[1] = -1;
  }
  pid_t pid() const { return pid_; }
  // Waits for the waiter's exit status.
  int exit_status() { return testing::wait_child(std::exchange(pid_, -1)); }

  // The lease of the waiter's key, once it is queued behind the holder (on etcd's state; the
  // bound only catches a hang). 0 if it never queued.
  static int64_t queued_lease(etcd::Client& c) {
    for (int i = 0; i < 6000; ++i) {
      auto r = c.call("/v3/kv/range", {{"key", etcd::base64_encode("t/n/")},
                                        {"range_end", etcd::base64_encode(etcd::prefix_end("t/n/"))},
                                        {"sort_target", "CREATE"}, {"sort_order", "DESCEND"}, {"limit", "1"}});
      if (etcd::int_field(r, "count") == 2) return etcd::int_field(r["kvs"][0], "lease");
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }

 private:
  int go_[2] = {-1, -1};
  pid_t pid_ = -1;
};

// etcd#9921: a waiter whose lease expired while it waited must never be told it holds the lock.
TEST(EtcdLock, AWaiterWhoseLeaseExpiredIsNeverGranted) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  auto o = etcd.options("t");
  o.ttl = 2s;
  Waiter waiter(o);
  {
    auto holder = EtcdLock::acquire(o, "n", "holder", false, std::nullopt);
    ASSERT_TRUE(holder);
    waiter.start();
    etcd::Client c(o);
    // Wait (on etcd's state) until the waiter is queued, then freeze it until its lease is gone.
    const int64_t waiter_lease = Waiter::queued_lease(c);
    ASSERT_NE(waiter_lease, 0);
    ASSERT_EQ(::kill(waiter.pid(), SIGSTOP), 0);
    for (int i = 0; i < 6000; ++i) {
      auto t = c.call("/v3/lease/timetolive", {{"ID", std::to_string(waiter_lease)}});
      if (etcd::int_field(t, "TTL") < 0) break;  // -1: expired (0 is "under a second left")
      std::this_thread::sleep_for(50ms);
    }
    holder->release();
  }
  ::kill(waiter.pid(), SIGCONT);
  EXPECT_EQ(waiter.exit_status(), 90);
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
  Waiter waiter(o);
  auto holder = EtcdLock::acquire(o, "n", "holder", false, std::nullopt);
  ASSERT_TRUE(holder);
  waiter.start();
  etcd::Client c(o);
  const int64_t waiter_lease = Waiter::queued_lease(c);
  ASSERT_NE(waiter_lease, 0);
  c.call("/v3/lease/revoke", {{"ID", std::to_string(waiter_lease)}});
  holder->release();
  EXPECT_EQ(waiter.exit_status(), 90);
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

// A TCP endpoint on 127.0.0.1 that stands in for an etcd member, until destroyed. Nothing
// listens on its port before `listening_after` (connections are refused); from then on it
//   - closes_first: closes its first connection unanswered (as etcd's TLS port does with a
//     plain-HTTP request) and holds every later one open without a word;
//   - frozen: holds every connection open without a word (a SIGSTOPped member);
//   - answers: answers every request with HTTP 200 and an empty JSON object.
class FakeMember {
 public:
  enum Behaviour { closes_first, frozen, answers };
  explicit FakeMember(Behaviour behaviour, std::chrono::milliseconds listening_after = 0ms)
      : port_(testing::free_ports(1).front()), behaviour_(behaviour), listening_after_(listening_after) {
    server_ = std::thread([this] { serve(); });
  }
  ~FakeMember() {
    stop_ = true;
    server_.join();
    for (int fd : held_) ::close(fd);
    if (listener_ >= 0) ::close(listener_);
  }
  FakeMember(const FakeMember&) = delete;
  FakeMember& operator=(const FakeMember&) = delete;
  int port() const { return port_; }

 private:
  void serve() {
    const auto start = std::chrono::steady_clock::now();
    while (!stop_ && std::chrono::steady_clock::now() - start < listening_after_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 16) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1:" << port_;
      return;
    }
    bool first = true;
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      const bool close_it = behaviour_ == answers || (behaviour_ == closes_first && first);
      first = false;
      if (!close_it) {
        held_.push_back(fd);
        continue;
      }
      char buf[4096];
      (void)!::read(fd, buf, sizeof buf);  // the request (small: one read)
      if (behaviour_ == answers) {
        static constexpr char kReply[] =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        (void)!::write(fd, kReply, sizeof kReply - 1);
      }
      ::close(fd);
    }
  }
  int port_;
  Behaviour behaviour_;
  std::chrono::milliseconds listening_after_;
  int listener_ = -1;  // touched by the server thread only until it is joined
  std::atomic<bool> stop_{false};
  std::vector<int> held_;  // touched by the server thread only until it is joined
  std::thread server_;
};

// An endpoint that closed a plain-HTTP request unanswered is reported as wanting TLS (76), even
// when the last attempt, given only what was left of the budget, then ran out of time: the
// running out says nothing about the endpoint (it made a loaded CI run report "unreachable").
TEST(EtcdClient, AnEndpointThatClosedPlainHttpUnansweredWantsTlsEvenIfTheLastAttemptTimesOut) {
  FakeMember endpoint(FakeMember::closes_first);
  auto o = parse_etcd_url(fmt::format("etcd://127.0.0.1:{}/p", endpoint.port()));
  o.request_timeout = 600ms;
  etcd::Client client(o);
  try {
    client.call("/v3/kv/range", {{"key", etcd::base64_encode("k")}}, 600ms);
    FAIL() << "an answer from an endpoint that never answers";
  } catch (const EtcdError& e) {
    EXPECT_EQ(e.kind(), EtcdError::Kind::tls) << e.what();
    EXPECT_EQ(e.exit_code(), 76) << e.what();
  }
}

// During an election the live members answer "no leader" at once, and a frozen member does not
// answer at all. The frozen member, last in a round, must not be given the whole rest of the
// budget: the live ones must be asked again within it. (A contention test's worker spent its
// 10 s on the frozen member while the others were electing, and failed "unreachable".) Here the
// live endpoint refuses connections for 300 ms, then answers; the frozen one comes second.
TEST(EtcdClient, AFrozenMemberLastInARoundLeavesTimeForAnotherRound) {
  FakeMember live(FakeMember::answers, 300ms);
  FakeMember frozen(FakeMember::frozen);
  auto o = parse_etcd_url(fmt::format("etcd://127.0.0.1:{},127.0.0.1:{}/p", live.port(), frozen.port()));
  etcd::Client client(o);
  const auto start = std::chrono::steady_clock::now();
  try {
    client.call("/v3/kv/range", {{"key", etcd::base64_encode("k")}}, 4000ms);
  } catch (const EtcdError& e) {
    ADD_FAILURE() << "the live endpoint was not asked again within the budget: " << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3900ms) << "the frozen member took the whole budget";
}

}  // namespace
}  // namespace holdfast

namespace holdfast {
namespace {

int64_t queue_length(etcd::Client& c, const std::string& queue) {
  auto r = c.call("/v3/kv/range", {{"key", etcd::base64_encode(queue)},
                                    {"range_end", etcd::base64_encode(etcd::prefix_end(queue))},
                                    {"count_only", true}});
  return etcd::int_field(r, "count");
}

// A session keeps one lease across grants (etcd's concurrency.Session): its grants exclude every
// other holder of the name (library, command), tokens still increase, and a name is taken once
// per session at a time.
TEST(EtcdSession, GrantsShareOneLeaseAndExcludeOtherHolders) {
  REQUIRE_ETCD();
  testing::EtcdCluster etcd(1);
  auto o = etcd.options("s");
  EtcdSession session(o);
  auto first = EtcdLock::acquire(session, "n", "rec", false, std::nullopt);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->lease_id(), session.lease_id());
  try {
    (void)EtcdLock::acquire(session, "n", "rec", true, std::nullopt);
    ADD_FAILURE() << "a second acquisition of a name through one session must be refused";
  } catch (const EtcdError&) {
    ADD_FAILURE() << "expected a usage error";
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::usage) << e.what();
  }
  EXPECT_FALSE(EtcdLock::acquire(o, "n", "other", true, std::nullopt));
  auto cli = testing::holdfast({"lock", "-n", "--backend", etcd.url("s"), "n", "true"});
  EXPECT_EQ(cli.exit_code, 1) << cli.err;
  const uint64_t token = first->token();
  first->release();
  auto second = EtcdLock::acquire(session, "n", "rec", true, std::nullopt);
  ASSERT_TRUE(second);
  EXPECT_GT(second->token(), token);
  EXPECT_EQ(second->lease_id(), session.lease_id());
  auto other_name = EtcdLock::acquire(session, "m", "rec", true, std::nullopt);
  EXPECT_TRUE(other_name);
  second->release();
  cli = testing::holdfast({"lock", "-n", "--backend", etcd.url("s"), "n", "true"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_FALSE(session.lost());
}

// Through a session the lease outlives an acquisition that did not return a lock: its queue key
// must be deleted on that path (else it would sit in the queue, bound to a live lease, and block
// every later holder of the name for as long as the session lives).
TEST(EtcdSession, AnAcquisitionThatGivesUpLeavesNoKeyBehind) {
  REQUIRE_ETCD();
  testing::EtcdCluster etcd(1);
  auto o = etcd.options("s");
  etcd::Client c(o);
  auto holder = EtcdLock::acquire(o, "n", "holder", false, std::nullopt);
  ASSERT_TRUE(holder);
  EtcdSession session(o);
  EXPECT_FALSE(EtcdLock::acquire(session, "n", "rec", true, std::nullopt));
  EXPECT_EQ(queue_length(c, "s/n/"), 1);
  EXPECT_FALSE(EtcdLock::acquire(session, "n", "rec", false, std::chrono::steady_clock::now() + 300ms));
  EXPECT_EQ(queue_length(c, "s/n/"), 1);
  holder->release();
  auto mine = EtcdLock::acquire(session, "n", "rec", true, std::nullopt);  // the name was given back
  ASSERT_TRUE(mine);
  EXPECT_EQ(queue_length(c, "s/n/"), 1);
}

}  // namespace
}  // namespace holdfast
