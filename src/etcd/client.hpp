// etcd/client: a small client for etcd's v3 JSON gateway (grpc-gateway, served by etcd itself on
// its client port at /v3/...), over libcurl. Only what the lock needs: range, txn, put, lease
// grant/revoke/keepalive/timetolive, and watch (one streaming request).
//
// Gateway conventions (etcd 3.4): bytes fields (key, value, range_end) are base64; int64 fields
// are JSON strings in answers; fields with their zero value are omitted from answers (a failed
// txn has no "succeeded", a keepalive for an expired lease has no "TTL"). Errors come back as a
// non-200 status with {"error","message","code"} (code: a gRPC status code).
//
// Endpoints fail over: a request that cannot reach the current endpoint (connect error, timeout,
// "no leader") is retried on the next one, round-robin, until the request's time budget is spent.
// Every request the lock retries this way is idempotent or guarded (create-if-absent txn, a delete
// guarded on a create revision, keepalive, range), so a retried request whose first answer was lost
// cannot do harm.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"

namespace holdfast::etcd {

std::string base64_encode(std::string_view bytes);
// Throws EtcdError(protocol) on malformed input.
std::string base64_decode(std::string_view text);
// The smallest key greater than every key starting with `prefix` (etcd's range_end for a prefix).
std::string prefix_end(std::string prefix);
// An int64 field of an answer: etcd sends them as strings; absent means 0.
int64_t int_field(const nlohmann::json& object, const char* name);

// Client of one etcd cluster. Not thread-safe: one Client per thread (each owns one connection).
class Client {
 public:
  explicit Client(EtcdOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // POSTs `body` to `path` (e.g. "/v3/kv/range") and returns the parsed answer. Transport
  // failures and retryable server errors are retried on the next endpoints until `budget` is
  // spent. Throws EtcdError.
  nlohmann::json call(std::string_view path, const nlohmann::json& body, std::chrono::milliseconds budget);
  nlohmann::json call(std::string_view path, const nlohmann::json& body) { return call(path, body, options_.request_timeout); }

  // Opens /v3/watch with `create_request` and hands every message's "result" to `on_result`
  // until it returns true (event). `stopped` when `stop()` became true (checked about every
  // second and at every message) or `deadline` passed; `broken` when the stream ended or could
  // not be opened (the caller re-reads, which fails over). Throws EtcdError for TLS, auth and
  // permission errors.
  enum class WatchEnd { event, stopped, broken };
  WatchEnd watch(const nlohmann::json& create_request, const std::function<bool(const nlohmann::json&)>& on_result,
             const std::function<bool()>& stop, std::chrono::steady_clock::time_point deadline);

  const EtcdOptions& options() const noexcept { return options_; }
  // When the attempt that produced the last answer `call` returned was sent. A request that
  // failed over answers late, but etcd received the answered attempt after this moment, never
  // before: a lease granted or renewed by it lives at least its TTL from here. (The call's own
  // start is earlier by all the time spent on members that did not answer.)
  std::chrono::steady_clock::time_point answered_attempt_sent() const noexcept { return answered_attempt_sent_; }
  // The endpoint the last request went to ("host:port").
  const std::string& endpoint() const noexcept { return options_.endpoints[current_]; }

 private:
  struct Curl;
  struct Attempt;
  void authenticate(std::chrono::milliseconds budget);
  Attempt perform(const std::string& url, const std::string& body, std::chrono::milliseconds timeout,
                  const std::function<bool(std::string_view)>* stream, const std::function<bool()>* stop);
  std::string url_of(std::string_view path) const;

  EtcdOptions options_;
  std::unique_ptr<Curl> curl_;
  std::unique_ptr<Curl> watch_curl_;  // watch streams only (made at the first watch)
  size_t current_ = 0;
  std::string auth_token_;
  std::chrono::steady_clock::time_point answered_attempt_sent_{};
};

}  // namespace holdfast::etcd
