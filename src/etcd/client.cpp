#include "etcd/client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mutex>
#include <thread>

#include "sys/shared_library.hpp"

namespace holdfast::etcd {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// gRPC status codes etcd's gateway reports in "code".
constexpr int kGrpcDeadlineExceeded = 4;
constexpr int kGrpcPermissionDenied = 7;
constexpr int kGrpcUnavailable = 14;
constexpr int kGrpcUnauthenticated = 16;

// The shortest time one request gets on one endpoint before the next one is tried.
constexpr std::chrono::milliseconds kMinAttempt(500);

// libcurl is loaded when the first Client is made, not linked: `holdfast lock` on a file is
// measured against flock(1) per invocation, and resolving libcurl's dependencies at every start
// would cost it more than all of its own work. Only the etcd backend pays for it.
struct CurlApi {
  CURLcode (*global_init)(long);
  CURL* (*easy_init)();
  void (*easy_cleanup)(CURL*);
  void (*easy_reset)(CURL*);
  CURLcode (*easy_setopt)(CURL*, CURLoption, ...);
  CURLcode (*easy_perform)(CURL*);
  CURLcode (*easy_getinfo)(CURL*, CURLINFO, ...);
  const char* (*easy_strerror)(CURLcode);
  curl_slist* (*slist_append)(curl_slist*, const char*);
  void (*slist_free_all)(curl_slist*);
};

const CurlApi& curl_api() {
  static const CurlApi api = [] {
    static const sys::SharedLibrary lib("libcurl.so.4", "etcd backend needs libcurl");
    CurlApi a{};
    lib.bind(a.global_init, "curl_global_init");
    lib.bind(a.easy_init, "curl_easy_init");
    lib.bind(a.easy_cleanup, "curl_easy_cleanup");
    lib.bind(a.easy_reset, "curl_easy_reset");
    lib.bind(a.easy_setopt, "curl_easy_setopt");
    lib.bind(a.easy_perform, "curl_easy_perform");
    lib.bind(a.easy_getinfo, "curl_easy_getinfo");
    lib.bind(a.easy_strerror, "curl_easy_strerror");
    lib.bind(a.slist_append, "curl_slist_append");
    lib.bind(a.slist_free_all, "curl_slist_free_all");
    a.global_init(CURL_GLOBAL_DEFAULT);
    return a;
  }();
  return api;
}

bool retryable_server_error(int code, const std::string& message) {
  return code == kGrpcUnavailable || code == kGrpcDeadlineExceeded ||
         message.find("leader") != std::string::npos || message.find("timed out") != std::string::npos ||
         message.find("too many requests") != std::string::npos;
}

bool tls_failure(CURLcode rc) {
  switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_ENGINE_INITFAILED: return true;
    default: return false;
  }
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t n = (uint32_t{static_cast<uint8_t>(bytes[i])} << 16) |
                       (uint32_t{static_cast<uint8_t>(bytes[i + 1])} << 8) | uint32_t{static_cast<uint8_t>(bytes[i + 2])};
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i < bytes.size()) {
    uint32_t n = uint32_t{static_cast<uint8_t>(bytes[i])} << 16;
    if (i + 1 < bytes.size()) n |= uint32_t{static_cast<uint8_t>(bytes[i + 1])} << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    const char* at = std::strchr(kAlphabet, c);
    if (at == nullptr || c == '\0') throw EtcdError(EtcdError::Kind::protocol, "", "reading an answer", "bad base64");
    acc = (acc << 6) | static_cast<uint32_t>(at - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = prefix.back();
    if (static_cast<uint8_t>(last) < 0xff) {
      last = static_cast<char>(static_cast<uint8_t>(last) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

int64_t int_field(const nlohmann::json& object, const char* name) {
  if (!object.is_object()) return 0;
  auto it = object.find(name);
  if (it == object.end() || it->is_null()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    try {
      size_t used = 0;
      int64_t v = std::stoll(s, &used);
      if (used == s.size()) return v;
    } catch (const std::exception&) {
    }
  }
  throw EtcdError(EtcdError::Kind::protocol, "", "reading an answer", fmt::format("field {} is not an integer", name));
}

struct Client::Curl {
  CURL* handle = nullptr;
  curl_slist* headers = nullptr;
  Curl() {
    handle = curl_api().easy_init();
    if (handle == nullptr) throw Error("", "cannot initialise libcurl", "curl_easy_init failed", exit_code::software);
  }
  ~Curl() {
    curl_api().slist_free_all(headers);
    curl_api().easy_cleanup(handle);
  }
  Curl(const Curl&) = delete;
  Curl& operator=(const Curl&) = delete;
};

// One HTTP exchange: either a transport failure (curl != CURLE_OK) or an HTTP status and body.
struct Client::Attempt {
  CURLcode curl = CURLE_OK;
  std::string curl_error;
  long status = 0;
  std::string body;
  bool stopped = false;    // the stream callback or stop() ended it
};

namespace {

struct StreamContext {
  std::string* body;
  const std::function<bool(std::string_view)>* stream;  // nullptr: buffer everything
  const std::function<bool()>* stop;
  bool* stopped;
  size_t consumed = 0;
};

size_t on_write(char* data, size_t size, size_t count, void* user) {
  auto* ctx = static_cast<StreamContext*>(user);
  const size_t n = size * count;
  ctx->body->append(data, n);
  if (ctx->stream == nullptr) return n;
  // A stream answer is one JSON document per line.
  for (;;) {
    const size_t eol = ctx->body->find('\n', ctx->consumed);
    if (eol == std::string::npos) break;
    std::string_view line(ctx->body->data() + ctx->consumed, eol - ctx->consumed);
    ctx->consumed = eol + 1;
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    if ((*ctx->stream)(line)) {
      *ctx->stopped = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
  }
  if (ctx->consumed > 0 && ctx->consumed == ctx->body->size()) {
    ctx->body->clear();
    ctx->consumed = 0;
  }
  return n;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* ctx = static_cast<StreamContext*>(user);
  if (ctx->stop != nullptr && (*ctx->stop)()) {
    *ctx->stopped = true;
    return 1;
  }
  return 0;
}

}  // namespace

Client::Client(EtcdOptions options) : options_(std::move(options)), curl_(std::make_unique<Curl>()) {
  if (options_.endpoints.empty()) throw Error("", "etcd", "no endpoints", exit_code::usage);
}

Client::~Client() = default;

std::string Client::url_of(std::string_view path) const {
  const bool tls = !options_.cacert.empty() || !options_.cert.empty();
  return fmt::format("{}://{}{}", tls ? "https" : "http", options_.endpoints[current_], path);
}

Client::Attempt Client::perform(const std::string& url, const std::string& body, milliseconds timeout,
                                const std::function<bool(std::string_view)>* stream,
                                const std::function<bool()>* stop) {
  Attempt a;
  // A watch stream ends by aborting the transfer, which closes its connection: it gets a handle
  // of its own, so the requests' connection stays open across it (a waiter's reads right after
  // the event it waited for then need no new connection).
  if (stream != nullptr && !watch_curl_) watch_curl_ = std::make_unique<Curl>();
  Curl& curl = stream != nullptr ? *watch_curl_ : *curl_;
  CURL* h = curl.handle;
  curl_api().easy_reset(h);
  char error[CURL_ERROR_SIZE] = {};
  StreamContext ctx{&a.body, stream, stop, &a.stopped};
  curl_api().slist_free_all(curl.headers);
  curl.headers = curl_api().slist_append(nullptr, "Content-Type: application/json");
  // gRPC metadata "hasleader: true" (etcd's require-leader, what clientv3.WithRequireLeader sends;
  // the gateway passes Grpc-Metadata-* headers on as metadata): a member that has no leader
  // (cut off, or mid-election) answers "etcdserver: no leader" at once instead of holding the
  // request until it times out, so the request fails over to a member that can serve it, and a
  // watch on such a member is closed by etcd after a few election timeouts.
  curl.headers = curl_api().slist_append(curl.headers, "Grpc-Metadata-hasleader: true");
  if (!auth_token_.empty()) curl.headers = curl_api().slist_append(curl.headers, ("Authorization: " + auth_token_).c_str());
  curl_api().easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_api().easy_setopt(h, CURLOPT_HTTPHEADER, curl.headers);
  curl_api().easy_setopt(h, CURLOPT_POST, 1L);
  curl_api().easy_setopt(h, CURLOPT_POSTFIELDS, body.c_str());
  curl_api().easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_api().easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_api().easy_setopt(h, CURLOPT_ERRORBUFFER, error);
  curl_api().easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
  curl_api().easy_setopt(h, CURLOPT_WRITEDATA, &ctx);
  curl_api().easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_api().easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  const long ms = std::max<long>(1, static_cast<long>(timeout.count()));
  curl_api().easy_setopt(h, CURLOPT_TIMEOUT_MS, ms);
  curl_api().easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, std::min<long>(ms, 2000));
  if (stop != nullptr) {
    curl_api().easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_api().easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_api().easy_setopt(h, CURLOPT_XFERINFODATA, &ctx);
  }
  if (!options_.cacert.empty()) curl_api().easy_setopt(h, CURLOPT_CAINFO, options_.cacert.c_str());
  if (!options_.cert.empty()) curl_api().easy_setopt(h, CURLOPT_SSLCERT, options_.cert.c_str());
  if (!options_.key.empty()) curl_api().easy_setopt(h, CURLOPT_SSLKEY, options_.key.c_str());
  a.curl = curl_api().easy_perform(h);
  if (a.curl != CURLE_OK) a.curl_error = error[0] != '\0' ? error : curl_api().easy_strerror(a.curl);
  curl_api().easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a.status);
  return a;
}

void Client::authenticate(milliseconds budget) {
  auth_token_.clear();
  nlohmann::json answer = call("/v3/auth/authenticate", {{"name", options_.user}, {"password", options_.password}}, budget);
  auth_token_ = answer.value("token", "");
  if (auth_token_.empty()) {
    throw EtcdError(EtcdError::Kind::auth, endpoint(), "authenticating as " + options_.user, "no token in the answer");
  }
}

nlohmann::json Client::call(std::string_view path, const nlohmann::json& body, milliseconds budget) {
  const auto deadline = Clock::now() + budget;
  if (!options_.user.empty() && auth_token_.empty() && path != "/v3/auth/authenticate") authenticate(budget);
  const std::string payload = body.dump();
  bool reauthenticated = false;
  std::string last_failure;
  // etcd closes a plain-HTTP connection to its TLS port without a word: when every attempt
  // ended so, the likely cause is a missing --cacert, not a dead cluster.
  bool only_empty_replies = true;
  const bool tls = !options_.cacert.empty() || !options_.cert.empty();
  for (size_t tried = 0;; ++tried) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (tried > 0 && left.count() <= 0) {
      if (only_empty_replies && !tls) {
        throw EtcdError(EtcdError::Kind::tls, fmt::format("{}", fmt::join(options_.endpoints, ",")), std::string(path),
                        "every endpoint closed plain-HTTP requests unanswered: it wants TLS (give --cacert)");
      }
      throw EtcdError(EtcdError::Kind::unreachable, fmt::format("{}", fmt::join(options_.endpoints, ",")),
                      std::string(path), last_failure);
    }
    // One attempt may not take the whole budget: a member that is frozen (SIGSTOP, a partition)
    // accepts connections and never answers, and every other endpoint must still get its turn
    // within the budget. The time left is shared among the endpoints not yet tried in this round
    // (a fast failure leaves more for the next ones). The keepalive depends on it: its budget is
    // what is left of the lease's validity, and it must reach a live member within it.
    // The last endpoint of a round gets half of what is left, not all of it: during an election
    // the live members answer "no leader" at once, and a frozen member last in the round would
    // otherwise spend the rest of the budget before they are asked again.
    const size_t endpoints = options_.endpoints.size();
    const size_t untried = endpoints - tried % endpoints;
    const long share = untried == 1 && endpoints > 1 ? 2 : static_cast<long>(untried);
    const auto attempt = std::min(left, std::max(kMinAttempt, left / share));
    const auto attempt_sent = Clock::now();
    Attempt a = perform(url_of(path), payload, std::max(attempt, milliseconds(1)), nullptr, nullptr);
    if (a.curl != CURLE_OK) {
      if (tls_failure(a.curl)) throw EtcdError(EtcdError::Kind::tls, endpoint(), "TLS", a.curl_error);
      last_failure = fmt::format("{}: {}", endpoint(), a.curl_error);
      // The last attempt gets only what is left of the budget (milliseconds, on a loaded machine):
      // its running out then says nothing about the endpoints, and must not turn "every endpoint
      // closed plain HTTP unanswered" into "unreachable".
      // (`attempt == left`: this attempt was given all that was left; its curl timeout may end a
      // fraction of a millisecond before `deadline`, so the clock cannot tell.)
      const bool cut_by_the_budget = tried > 0 && a.curl == CURLE_OPERATION_TIMEDOUT && attempt == left;
      only_empty_replies = only_empty_replies && (a.curl == CURLE_GOT_NOTHING || cut_by_the_budget);
      current_ = (current_ + 1) % options_.endpoints.size();
      if ((tried + 1) % options_.endpoints.size() == 0) std::this_thread::sleep_for(milliseconds(50));
      continue;
    }
    only_empty_replies = false;
    nlohmann::json answer = nlohmann::json::parse(a.body, nullptr, false);
    if (a.status == 200 && answer.is_object()) {
      answered_attempt_sent_ = attempt_sent;
      return answer;
    }
    if (!answer.is_object()) {
      // A plain-HTTP request to a TLS port gets "Client sent an HTTP request to an HTTPS server".
      std::string text = a.body.substr(0, a.body.find('\n'));
      if (text.find("HTTPS") != std::string::npos) {
        throw EtcdError(EtcdError::Kind::tls, endpoint(), std::string(path), "the server wants TLS (give --cacert)");
      }
      throw EtcdError(EtcdError::Kind::protocol, endpoint(), std::string(path),
                      fmt::format("HTTP {}: {}", a.status, text.substr(0, 200)));
    }
    const int code = static_cast<int>(int_field(answer, "code"));
    const std::string message = answer.value("message", answer.value("error", std::string("unknown error")));
    if (code == kGrpcUnauthenticated || message.find("invalid auth token") != std::string::npos ||
        message.find("authentication failed") != std::string::npos || message.find("user name is empty") != std::string::npos) {
      if (!reauthenticated && !options_.user.empty() && path != "/v3/auth/authenticate" &&
          message.find("invalid auth token") != std::string::npos) {
        reauthenticated = true;
        authenticate(std::max(left, milliseconds(1)));
        continue;
      }
      throw EtcdError(EtcdError::Kind::auth, endpoint(), std::string(path), message, code);
    }
    if (code == kGrpcPermissionDenied || message.find("permission denied") != std::string::npos) {
      throw EtcdError(EtcdError::Kind::permission, endpoint(), std::string(path), message, code);
    }
    if (retryable_server_error(code, message)) {
      last_failure = fmt::format("{}: {}", endpoint(), message);
      current_ = (current_ + 1) % options_.endpoints.size();
      std::this_thread::sleep_for(milliseconds(50));
      continue;
    }
    throw EtcdError(EtcdError::Kind::server, endpoint(), std::string(path), message, code);
  }
}

Client::WatchEnd Client::watch(const nlohmann::json& create_request,
                                const std::function<bool(const nlohmann::json&)>& on_result,
                                const std::function<bool()>& stop, Clock::time_point deadline) {
  if (!options_.user.empty() && auth_token_.empty()) authenticate(options_.request_timeout);
  const std::string payload = nlohmann::json{{"create_request", create_request}}.dump();
  std::optional<EtcdError> server_error;
  bool done = false;
  const std::function<bool()> stop_or_late = [&] { return stop() || Clock::now() >= deadline; };
  const std::function<bool(std::string_view)> stream = [&](std::string_view line) {
    nlohmann::json message = nlohmann::json::parse(line, nullptr, false);
    if (!message.is_object()) return false;
    if (message.contains("error")) {
      const auto& e = message["error"];
      const std::string text = e.is_object() ? e.value("message", std::string("watch failed")) : std::string("watch failed");
      const int code = e.is_object() ? static_cast<int>(int_field(e, "code")) : 0;
      EtcdError::Kind kind = code == kGrpcPermissionDenied ? EtcdError::Kind::permission
                             : code == kGrpcUnauthenticated ? EtcdError::Kind::auth
                                                            : EtcdError::Kind::unreachable;
      server_error.emplace(kind, endpoint(), "/v3/watch", text, code);
      return true;
    }
    if (message.contains("result") && on_result(message["result"])) {
      done = true;
      return true;
    }
    return stop_or_late();
  };
  if (stop_or_late()) return WatchEnd::stopped;
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  // A watch on a frozen member would wait forever: each stream lives at most kWatchSpan, then the
  // caller re-reads (a linearizable range, which fails over) and watches again. This bounds how
  // long a frozen member can hide a deletion; it is not how deletions are found.
  constexpr milliseconds kWatchSpan(5000);
  const auto timeout = std::min(left, kWatchSpan);
  Attempt a = perform(url_of("/v3/watch"), payload, std::max(timeout, milliseconds(1)), &stream, &stop_or_late);
  if (server_error) {
    if (server_error->kind() != EtcdError::Kind::unreachable) throw *server_error;
  } else if (done) {
    return WatchEnd::event;
  } else if (a.stopped || (a.curl == CURLE_OPERATION_TIMEDOUT && Clock::now() >= deadline)) {
    return WatchEnd::stopped;
  } else if (a.curl != CURLE_OK && tls_failure(a.curl)) {
    throw EtcdError(EtcdError::Kind::tls, endpoint(), "TLS", a.curl_error);
  }
  // The stream broke (member down, leader change): move on to the next endpoint.
  current_ = (current_ + 1) % options_.endpoints.size();
  return WatchEnd::broken;
}

}  // namespace holdfast::etcd
