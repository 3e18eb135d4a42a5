// EtcdLock: etcd's concurrency.Mutex recipe over the JSON gateway, plus the checks etcd 3.4 lacks
// (see include/holdfast/etcd.hpp and docs/ETCD.md).
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mutex>
#include <set>
#include <thread>

#include "etcd/client.hpp"
#include "holdfast/etcd.hpp"
#include "sys/fd.hpp"

namespace holdfast {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using nlohmann::json;

namespace {

std::string kind_name(EtcdError::Kind kind) {
  switch (kind) {
    case EtcdError::Kind::unreachable: return "etcd unreachable";
    case EtcdError::Kind::tls: return "TLS";
    case EtcdError::Kind::auth: return "authentication failed";
    case EtcdError::Kind::permission: return "permission denied";
    case EtcdError::Kind::server: return "etcd error";
    case EtcdError::Kind::protocol: return "unreadable answer";
    case EtcdError::Kind::lost: return "lock lost";
  }
  return "etcd";
}

}  // namespace

EtcdError::EtcdError(Kind kind, const std::string& where, const std::string& context, const std::string& cause,
                     int grpc_code)
    : Error(where, context, kind_name(kind) + ": " + cause, exit_code_of(kind)), kind_(kind), grpc_code_(grpc_code) {}

int EtcdError::exit_code_of(Kind kind) noexcept {
  switch (kind) {
    case Kind::unreachable: return exit_code::unavailable;
    case Kind::tls:
    case Kind::protocol:
    case Kind::server: return exit_code::protocol;
    case Kind::auth:
    case Kind::permission: return exit_code::no_perm;
    case Kind::lost: return exit_code::lock_lost;
  }
  return exit_code::software;
}

bool is_etcd_url(std::string_view text) noexcept { return text.substr(0, 7) == "etcd://"; }

EtcdOptions parse_etcd_url(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return Error(std::string(url), "--backend", why + " (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)",
                 exit_code::usage);
  };
  if (!is_etcd_url(url)) throw bad("not an etcd URL");
  std::string_view rest = url.substr(7);
  const size_t slash = rest.find('/');
  std::string_view hosts = rest.substr(0, slash);
  std::string_view prefix = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  EtcdOptions options;
  options.prefix = std::string(prefix);
  while (!hosts.empty()) {
    const size_t comma = hosts.find(',');
    std::string_view host = hosts.substr(0, comma);
    const size_t colon = host.rfind(':');
    if (colon == std::string_view::npos || colon == 0 || colon + 1 == host.size() ||
        host.substr(colon + 1).find_first_not_of("0123456789") != std::string_view::npos) {
      throw bad("endpoint '" + std::string(host) + "' is not HOST:PORT");
    }
    options.endpoints.emplace_back(host);
    if (comma == std::string_view::npos) break;
    hosts.remove_prefix(comma + 1);
  }
  if (options.endpoints.empty()) throw bad("no endpoint");
  return options;
}

// A lease and the thread that keeps it alive. The lock is valid until valid_until: the send time
// of the last renewal etcd answered with a TTL, plus that TTL, minus the margin. The lease's TTL
// on the server restarted when it received the request, which was after we sent it, so (on clocks
// whose rates differ by less than the margin allows) the lease is alive until then.
class Session {
 public:
  Session(EtcdOptions options, etcd::Client& client) : options_(std::move(options)) {
    lost_event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!lost_event_) throw Error(errno, "", "cannot create an eventfd");
    json answer = client.call("/v3/lease/grant", {{"TTL", std::to_string(options_.ttl.count())}});
    // The lease was created after the attempt that answered was sent, not when the call began:
    // a grant that failed over past a member without a leader (an election) or a frozen one may
    // have spent most of a TTL there, and counting that time would leave the lease all but
    // expired on our clock while etcd has just granted it.
    const auto sent = client.answered_attempt_sent();
    lease_ = etcd::int_field(answer, "ID");
    const int64_t ttl = etcd::int_field(answer, "TTL");
    if (lease_ == 0 || ttl <= 0) {
      throw EtcdError(EtcdError::Kind::server, client.endpoint(), "/v3/lease/grant",
                      answer.value("error", std::string("no lease in the answer")));
    }
    ttl_ = std::chrono::seconds(ttl);
    margin_ = std::max(milliseconds(200), std::chrono::duration_cast<milliseconds>(ttl_) / 5);
    valid_until_ = sent + ttl_ - margin_;
    last_sent_ = sent;
    thread_ = std::thread([this] { keep_alive(); });
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { close(true); }

  // Stops renewing; with `revoke`, revokes the lease (deleting every key bound to it). Errors
  // are ignored: an unrevoked lease expires by itself within its TTL.
  void close(bool revoke, etcd::Client* client = nullptr) noexcept {
    {
      std::lock_guard lk(m_);
      if (closed_) return;
      closed_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (!revoke) return;
    try {
      std::optional<etcd::Client> own;
      if (client == nullptr) client = &own.emplace(options_);
      client->call("/v3/lease/revoke", {{"ID", std::to_string(lease_)}}, std::min(options_.request_timeout, milliseconds(2000)));
    } catch (const std::exception&) {
      // expires by itself
    }
  }

  int64_t lease() const noexcept { return lease_; }
  std::chrono::seconds ttl() const noexcept { return ttl_; }
  milliseconds margin() const noexcept { return margin_; }
  bool lost() const noexcept { return lost_.load(std::memory_order_acquire); }
  std::string lost_reason() const {
    std::lock_guard lk(m_);
    return lost_reason_;
  }
  Clock::time_point valid_until() const {
    std::lock_guard lk(m_);
    return valid_until_;
  }
  int lost_fd() const noexcept { return lost_event_.get(); }

 private:
  void mark_lost(const std::string& reason) {
    {
      std::lock_guard lk(m_);
      lost_reason_ = reason;
    }
    lost_.store(true, std::memory_order_release);
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(lost_event_.get(), &one, sizeof one);
  }

  void keep_alive() {
    std::optional<etcd::Client> client;
    try {
      client.emplace(options_);
    } catch (const std::exception& e) {
      mark_lost(e.what());
      return;
    }
    std::string failure;
    bool retrying = false;
    for (;;) {
      Clock::time_point valid_until;
      {
        std::unique_lock lk(m_);
        const auto next = retrying ? Clock::now() + milliseconds(100) : last_sent_ + ttl_ / 3;
        cv_.wait_until(lk, std::min(next, valid_until_), [&] { return closed_; });
        if (closed_) return;
        valid_until = valid_until_;
        if (Clock::now() < next && Clock::now() < valid_until) continue;
      }
      const auto sent = Clock::now();
      if (sent >= valid_until) {
        mark_lost(fmt::format("lease {:x} not renewed in time ({})", lease_, failure.empty() ? "no answer" : failure));
        return;
      }
      try {
        json answer = client->call("/v3/lease/keepalive", {{"ID", std::to_string(lease_)}},
                                   std::chrono::duration_cast<milliseconds>(valid_until - sent) + milliseconds(1));
        const json& result = answer.contains("result") ? answer["result"] : answer;
        const int64_t ttl = etcd::int_field(result, "TTL");
        if (ttl <= 0) {
          mark_lost(fmt::format("lease {:x} expired (etcd answered the renewal without a TTL)", lease_));
          return;
        }
        // etcd restarted the TTL when the attempt that answered reached it (after failing over,
        // that is later than `sent`).
        const auto renewed_from = client->answered_attempt_sent();
        std::lock_guard lk(m_);
        last_sent_ = renewed_from;
        valid_until_ = std::max(valid_until_, renewed_from + std::chrono::seconds(ttl) - margin_);
        retrying = false;
        failure.clear();
      } catch (const std::exception& e) {
        failure = e.what();
        retrying = true;
      }
    }
  }

  EtcdOptions options_;
  int64_t lease_ = 0;
  std::chrono::seconds ttl_{0};
  milliseconds margin_{0};
  sys::UniqueFd lost_event_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  bool closed_ = false;
  Clock::time_point valid_until_;
  Clock::time_point last_sent_;
  std::atomic<bool> lost_{false};
  std::string lost_reason_;
  std::thread thread_;
};

// The lease, connection and names of an EtcdSession.
struct EtcdSession::Impl {
  EtcdOptions options;
  etcd::Client client;
  Session session;
  std::mutex m;
  std::set<std::string> names;  // held or awaited through this session (one key per name)
  explicit Impl(const EtcdOptions& o) : options(o), client(o), session(o, client) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() { session.close(true, &client); }
};

struct EtcdLock::State {
  EtcdOptions options;
  std::shared_ptr<EtcdSession::Impl> shared;  // taken through a session; else its own:
  std::unique_ptr<etcd::Client> own_client;
  std::unique_ptr<Session> own_session;       // (destroyed first: revokes the lease, and the key)
  std::string name;
  std::string key;
  uint64_t revision = 0;
  bool held = false;
  bool queued = false;    // through a session: our key may exist (created, not yet deleted)
  bool reserved = false;  // through a session: `name` is ours in the session's names

  // Through a session: gives the name back (once our key is surely gone).
  void give_back_name() {
    if (!reserved) return;
    reserved = false;
    std::lock_guard lk(shared->m);
    shared->names.erase(name);
  }

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  // Through a session, the lease outlives us: a key we created and did not delete (a waiter that
  // gave up or failed, a release whose delete failed) is deleted here, guarded on its revision.
  ~State();

  etcd::Client& client() { return shared ? shared->client : *own_client; }
  Session& session() const { return shared ? shared->session : *own_session; }
};

namespace {

std::string queue_of(const EtcdOptions& options, const std::string& name) {
  return options.prefix.empty() ? name + "/" : options.prefix + "/" + name + "/";
}

json owner_range(const std::string& queue) {
  return {{"key", etcd::base64_encode(queue)},
          {"range_end", etcd::base64_encode(etcd::prefix_end(queue))},
          {"sort_target", "CREATE"},
          {"sort_order", "ASCEND"},
          {"limit", "1"}};
}

json create_revision_is(const std::string& key, uint64_t revision) {
  return {{"key", etcd::base64_encode(key)},
          {"target", "CREATE"},
          {"result", "EQUAL"},
          {"create_revision", std::to_string(revision)}};
}

const json& first_kv(const json& range) {
  static const json kNone;
  auto it = range.find("kvs");
  if (it == range.end() || !it->is_array() || it->empty()) return kNone;
  return (*it)[0];
}

const json& response_range(const json& txn, size_t index) {
  static const json kEmpty = json::object();
  auto it = txn.find("responses");
  if (it == txn.end() || !it->is_array() || it->size() <= index) return kEmpty;
  const json& r = (*it)[index];
  auto rr = r.find("response_range");
  return rr == r.end() ? kEmpty : *rr;
}

}  // namespace

EtcdLock::State::~State() {
  if (!shared) return;
  if (queued) {
    try {
      json txn{{"compare", json::array({create_revision_is(key, revision)})},
               {"success", json::array({json{{"request_delete_range", {{"key", etcd::base64_encode(key)}}}}})}};
      shared->client.call("/v3/kv/txn", txn, std::min(shared->options.request_timeout, milliseconds(2000)));
    } catch (const std::exception&) {
      // the key goes with the session's lease
    }
  }
  give_back_name();
}

EtcdSession::EtcdSession(const EtcdOptions& options) : impl_(std::make_shared<Impl>(options)) {}
EtcdSession::EtcdSession(EtcdSession&&) noexcept = default;
EtcdSession& EtcdSession::operator=(EtcdSession&&) noexcept = default;
EtcdSession::~EtcdSession() = default;
int64_t EtcdSession::lease_id() const noexcept { return impl_->session.lease(); }
bool EtcdSession::lost() const noexcept { return impl_->session.lost(); }
int EtcdSession::lost_fd() const noexcept { return impl_->session.lost_fd(); }

EtcdLock::EtcdLock(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
EtcdLock::EtcdLock(EtcdLock&&) noexcept = default;
EtcdLock& EtcdLock::operator=(EtcdLock&& other) noexcept {
  if (this != &other) {
    try {
      if (state_ && state_->held) release();
    } catch (const std::exception&) {
    }
    state_ = std::move(other.state_);
  }
  return *this;
}
EtcdLock::~EtcdLock() {
  if (!state_ || !state_->held) return;
  try {
    release();
  } catch (const std::exception&) {
    // the lease expires by itself
  }
}

std::optional<EtcdLock> EtcdLock::acquire(const EtcdOptions& options, const std::string& name,
                                          const std::string& record, bool nonblock,
                                          std::optional<Clock::time_point> deadline) {
  if (name.empty()) throw Error("", "etcd lock", "empty lock name", exit_code::usage);
  auto state = std::make_unique<State>();
  state->options = options;
  state->name = name;
  state->own_client = std::make_unique<etcd::Client>(options);
  state->own_session = std::make_unique<Session>(options, *state->own_client);
  return enqueue_and_wait(std::move(state), record, nonblock, deadline);
}

std::optional<EtcdLock> EtcdLock::acquire(EtcdSession& session, const std::string& name, const std::string& record,
                                          bool nonblock, std::optional<Clock::time_point> deadline) {
  if (name.empty()) throw Error("", "etcd lock", "empty lock name", exit_code::usage);
  {
    std::lock_guard lk(session.impl_->m);
    if (!session.impl_->names.insert(name).second) {
      throw Error(name, "etcd lock", "already held or awaited through this session", exit_code::usage);
    }
  }
  auto state = std::make_unique<State>();
  state->shared = session.impl_;
  state->reserved = true;  // from here on, ~State gives the name back
  state->options = session.impl_->options;
  state->name = name;
  return enqueue_and_wait(std::move(state), record, nonblock, deadline);
}

std::optional<EtcdLock> EtcdLock::enqueue_and_wait(std::unique_ptr<State> state, const std::string& record,
                                                   bool nonblock, std::optional<Clock::time_point> deadline) {
  const EtcdOptions& options = state->options;
  const std::string& name = state->name;
  etcd::Client& client = state->client();
  Session& session = state->session();
  const std::string queue = queue_of(options, name);
  state->key = queue + fmt::format("{:x}", session.lease());
  const std::string key64 = etcd::base64_encode(state->key);

  // Enqueue (create our key if absent) and read the owner, in one transaction.
  json txn{{"compare", json::array({create_revision_is(state->key, 0)})},
           {"success", json::array({json{{"request_put",
                                          {{"key", key64},
                                           {"value", etcd::base64_encode(record)},
                                           {"lease", std::to_string(session.lease())}}}},
                                    json{{"request_range", owner_range(queue)}}})},
           {"failure", json::array({json{{"request_range", {{"key", key64}}}},
                                    json{{"request_range", owner_range(queue)}}})}};
  json answer = client.call("/v3/kv/txn", txn);
  const bool created = answer.value("succeeded", false);
  const int64_t mine = created ? etcd::int_field(answer["header"], "revision")
                               : etcd::int_field(first_kv(response_range(answer, 0)), "create_revision");
  const int64_t owner = etcd::int_field(first_kv(response_range(answer, 1)), "create_revision");
  if (mine <= 0) throw EtcdError(EtcdError::Kind::protocol, client.endpoint(), state->key, "no create revision for our key");
  state->revision = static_cast<uint64_t>(mine);
  // Ours either way: created now, or by an earlier attempt of this same request whose answer was
  // lost (the session's names rule out another acquisition of this key).
  state->queued = true;

  if (owner == mine) {
    // The enqueue transaction itself saw our key (bound to our live lease: the put or the key's
    // existence proves it) as the oldest one, atomically: nothing to re-check.
    state->held = true;
    return EtcdLock(std::move(state));
  }
  if (nonblock) return std::nullopt;  // ~State deletes our key (~Session revokes its lease, or ~State deletes it)
  const auto until = deadline.value_or(Clock::time_point::max());
  // One read-only transaction (a linearizable read, no consensus write) answers both questions
  // at one revision: which key is just before ours, and is ours still there as we made it.
  const json look{{"success", json::array({json{{"request_range",
                                                 {{"key", etcd::base64_encode(queue)},
                                                  {"range_end", etcd::base64_encode(etcd::prefix_end(queue))},
                                                  {"sort_target", "CREATE"},
                                                  {"sort_order", "DESCEND"},
                                                  {"max_create_revision", std::to_string(mine - 1)},
                                                  {"limit", "1"}}}},
                                           json{{"request_range", {{"key", key64}}}}})}};
  for (;;) {
    if (options.cancel && options.cancel()) return std::nullopt;
    if (session.lost()) throw EtcdError(EtcdError::Kind::lost, state->key, "waiting", session.lost_reason());
    json seen = client.call("/v3/kv/txn", look);
    // Verify (etcd#9921): our key still exists with our create revision and lease. A waiter
    // whose lease expired (and whose key went with it) must never be told it holds the lock.
    const json& kv = first_kv(response_range(seen, 1));
    if (kv.is_null() || etcd::int_field(kv, "create_revision") != mine || etcd::int_field(kv, "lease") != session.lease()) {
      throw EtcdError(EtcdError::Kind::lost, state->key, "waiting",
                      "our key is gone (the lease expired while waiting, etcd#9921)");
    }
    const json& predecessor = first_kv(response_range(seen, 0));
    if (predecessor.is_null()) break;
    const int64_t at = etcd::int_field(seen["header"], "revision");
    auto end = client.watch(
        {{"key", predecessor.value("key", "")}, {"start_revision", std::to_string(at + 1)}},
        [](const json& result) {
          if (result.value("canceled", false)) return true;  // compacted: read again
          auto it = result.find("events");
          if (it == result.end() || !it->is_array()) return false;
          for (const json& event : *it) {
            if (event.value("type", "") == "DELETE") return true;
          }
          return false;
        },
        [&session, &options] { return session.lost() || (options.cancel && options.cancel()); }, until);
    if (end == etcd::Client::WatchEnd::stopped) {
      if (session.lost()) throw EtcdError(EtcdError::Kind::lost, state->key, "waiting", session.lost_reason());
      return std::nullopt;  // deadline or cancelled
    }
    if (end == etcd::Client::WatchEnd::broken) std::this_thread::sleep_for(milliseconds(100));
  }
  // And the lease itself is alive on the server (not merely not yet revoked).
  json ttl = client.call("/v3/lease/timetolive", {{"ID", std::to_string(session.lease())}});
  if (etcd::int_field(ttl, "TTL") <= 0 || session.lost()) {
    throw EtcdError(EtcdError::Kind::lost, state->key, "after waiting", "our lease has expired");
  }
  state->held = true;
  return EtcdLock(std::move(state));
}

void EtcdLock::release() {
  if (!state_ || !state_->held) return;
  state_->held = false;
  // Guarded on our create revision: a retried or late delete can never remove a newer key of
  // the same name (etcd#22082). Then the lease goes.
  json txn{{"compare", json::array({create_revision_is(state_->key, state_->revision)})},
           {"success", json::array({json{{"request_delete_range", {{"key", etcd::base64_encode(state_->key)}}}}})}};
  std::optional<EtcdError> failure;
  try {
    state_->client().call("/v3/kv/txn", txn);
    state_->queued = false;
    if (state_->shared) state_->give_back_name();
  } catch (const EtcdError& e) {
    failure = e;  // through a session, ~State tries the delete once more
  }
  if (state_->own_session) state_->own_session->close(true, state_->own_client.get());
  if (failure) throw *failure;
}

bool EtcdLock::update_record(const std::string& record) {
  if (!state_ || !state_->held) return false;
  json txn{{"compare", json::array({create_revision_is(state_->key, state_->revision)})},
           {"success", json::array({json{{"request_put",
                                          {{"key", etcd::base64_encode(state_->key)},
                                           {"value", etcd::base64_encode(record)},
                                           {"lease", std::to_string(state_->session().lease())}}}}})}};
  return state_->client().call("/v3/kv/txn", txn).value("succeeded", false);
}

uint64_t EtcdLock::token() const noexcept { return state_->revision; }
const std::string& EtcdLock::key() const noexcept { return state_->key; }
int64_t EtcdLock::lease_id() const noexcept { return state_->session().lease(); }
std::chrono::seconds EtcdLock::ttl() const noexcept { return state_->session().ttl(); }
milliseconds EtcdLock::margin() const noexcept { return state_->session().margin(); }
Clock::time_point EtcdLock::valid_until() const noexcept { return state_->session().valid_until(); }
bool EtcdLock::lost() const noexcept { return state_->session().lost(); }
std::string EtcdLock::lost_reason() const { return state_->session().lost_reason(); }
int EtcdLock::lost_fd() const noexcept { return state_->session().lost_fd(); }

EtcdHolder inspect_etcd_holder(const EtcdOptions& options, const std::string& name) {
  etcd::Client client(options);
  const std::string queue = queue_of(options, name);
  json answer = client.call("/v3/kv/range", owner_range(queue));
  EtcdHolder holder;
  const json& kv = first_kv(answer);
  if (kv.is_null()) return holder;
  holder.held = true;
  holder.key = etcd::base64_decode(kv.value("key", ""));
  holder.token = static_cast<uint64_t>(etcd::int_field(kv, "create_revision"));
  holder.lease_id = etcd::int_field(kv, "lease");
  holder.record = etcd::base64_decode(kv.value("value", ""));
  const int64_t count = etcd::int_field(answer, "count");
  holder.waiters = count > 1 ? static_cast<size_t>(count - 1) : 0;
  if (holder.lease_id != 0) {
    json ttl = client.call("/v3/lease/timetolive", {{"ID", std::to_string(holder.lease_id)}});
    holder.ttl_remaining = etcd::int_field(ttl, "TTL");
  }
  return holder;
}

std::string etcd_holder_json(const std::string& name, const EtcdHolder& holder) {
  json j{{"path", name}, {"backend", "etcd"}, {"state", holder.held ? "held" : "free"}};
  if (holder.held) {
    json record = json::parse(holder.record, nullptr, false);
    j["key"] = holder.key;
    j["token"] = holder.token;
    j["lease"] = fmt::format("{:x}", holder.lease_id);
    j["ttl_remaining_s"] = holder.ttl_remaining;
    j["waiters"] = holder.waiters;
    j["record"] = record.is_discarded() ? json(holder.record) : record;
  }
  return j.dump();
}

}  // namespace holdfast
