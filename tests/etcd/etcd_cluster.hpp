// A real etcd for tests: 1 or 3 members of Debian's /usr/bin/etcd on loopback, free ports, data
// in a temp dir. Everything it started is killed and reaped, and the temp dir removed, on every
// path (RAII: sys::Child kills and reaps on destruction, TempDir removes itself).
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "etcd/client.hpp"
#include "holdfast/etcd.hpp"
#include "support/testing.hpp"
#include "sys/fd.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

namespace holdfast::testing {

inline bool etcd_available() { return ::access("/usr/bin/etcd", X_OK) == 0; }

// Skips the current test where Debian's etcd is not installed.
#define REQUIRE_ETCD() \
  if (!holdfast::testing::etcd_available()) GTEST_SKIP() << "/usr/bin/etcd is not installed (deps: etcd-server)"

// `count` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
inline std::vector<int> free_ports(size_t count) {
  std::vector<sys::UniqueFd> held;
  std::vector<int> ports;
  for (size_t i = 0; i < count; ++i) {
    sys::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind");
    socklen_t len = sizeof a;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    ports.push_back(ntohs(a.sin_port));
    held.push_back(std::move(fd));
  }
  return ports;
}

struct EtcdTls {
  std::string ca, server_cert, server_key;  // the members' certificate (for 127.0.0.1)
  bool client_cert_auth = false;
};

class EtcdCluster {
 public:
  explicit EtcdCluster(size_t members, std::optional<EtcdTls> tls = std::nullopt) : tls_(std::move(tls)) {
    auto ports = free_ports(members * 2);
    std::vector<std::string> initial;
    for (size_t i = 0; i < members; ++i) {
      client_ports_.push_back(ports[2 * i]);
      peer_ports_.push_back(ports[2 * i + 1]);
      initial.push_back(fmt::format("m{}=http://127.0.0.1:{}", i, peer_ports_[i]));
    }
    initial_cluster_ = fmt::format("{}", fmt::join(initial, ","));
    for (size_t i = 0; i < members; ++i) children_.push_back(start(i));
    for (size_t i = 0; i < members; ++i) wait_ready(i);
  }
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;
  ~EtcdCluster() {
    for (size_t i = 0; i < children_.size(); ++i) {
      if (children_[i].pid() > 0) ::kill(children_[i].pid(), SIGCONT);  // a stopped member must die too
    }
    children_.clear();  // SIGKILL + reap each
  }

  size_t size() const { return client_ports_.size(); }
  std::string endpoint(size_t i) const { return fmt::format("127.0.0.1:{}", client_ports_[i]); }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> e;
    for (size_t i = 0; i < size(); ++i) e.push_back(endpoint(i));
    return e;
  }
  // "etcd://E1,E2,.../PREFIX"
  std::string url(const std::string& prefix) const { return fmt::format("etcd://{}/{}", fmt::join(endpoints(), ","), prefix); }
  EtcdOptions options(const std::string& prefix) const {
    EtcdOptions o = parse_etcd_url(url(prefix));
    if (tls_) o.cacert = tls_->ca;
    return o;
  }
  pid_t pid(size_t i) const { return children_[i].pid(); }
  const std::string& data_dir() const { return dir_.path(); }

  // Index of the current leader (asks each live member); nullopt if none answers.
  std::optional<size_t> leader() const {
    for (size_t i = 0; i < size(); ++i) {
      try {
        EtcdOptions o = options("");
        o.endpoints = {endpoint(i)};
        etcd::Client c(o);
        auto s = c.call("/v3/maintenance/status", nlohmann::json::object(), std::chrono::milliseconds(2000));
        const auto leader_id = s.value("leader", std::string());
        const auto me = s["header"].value("member_id", std::string());
        if (!leader_id.empty() && leader_id == me) return i;
      } catch (const std::exception&) {
      }
    }
    return std::nullopt;
  }

  // SIGKILLs member i (its data stays; restart(i) brings it back).
  void kill_member(size_t i) { children_[i] = sys::Child(); }
  void restart(size_t i) {
    children_[i] = start(i);
    wait_ready(i);
  }
  void stop_member(size_t i) { ::kill(children_[i].pid(), SIGSTOP); }
  void cont_member(size_t i) { ::kill(children_[i].pid(), SIGCONT); }

 private:
  sys::Child start(size_t i) {
    const std::string scheme = tls_ ? "https" : "http";
    const std::string client_url = fmt::format("{}://127.0.0.1:{}", scheme, client_ports_[i]);
    const std::string peer_url = fmt::format("http://127.0.0.1:{}", peer_ports_[i]);
    sys::SpawnRequest r;
    r.executable = "/usr/bin/etcd";
    r.argv = {"etcd",
              "--name", fmt::format("m{}", i),
              "--data-dir", dir_ / fmt::format("m{}", i),
              "--listen-client-urls", client_url,
              "--advertise-client-urls", client_url,
              "--listen-peer-urls", peer_url,
              "--initial-advertise-peer-urls", peer_url,
              "--initial-cluster", initial_cluster_,
              "--initial-cluster-token", "holdfast-test"};
    if (tls_) {
      r.argv.insert(r.argv.end(), {"--cert-file", tls_->server_cert, "--key-file", tls_->server_key});
      if (tls_->client_cert_auth) r.argv.insert(r.argv.end(), {"--client-cert-auth", "--trusted-ca-file", tls_->ca});
    }
    r.env = {"PATH=/usr/bin:/bin"};
    sys::UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    sys::UniqueFd log(::open((dir_ / fmt::format("m{}.log", i)).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    r.fds = {{0, null.get()}, {1, log.get()}, {2, log.get()}};
    r.parent_death_signal = SIGKILL;
    return sys::spawn(r);
  }

  void wait_ready(size_t i) {
    EtcdOptions o = options("");
    o.endpoints = {endpoint(i)};
    if (tls_ && tls_->client_cert_auth) {
      o.cert = tls_->server_cert;
      o.key = tls_->server_key;
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);  // a hang, not a timing
    for (;;) {
      try {
        etcd::Client c(o);
        c.call("/v3/kv/range", {{"key", etcd::base64_encode("ready")}}, std::chrono::milliseconds(2000));
        return;
      } catch (const std::exception& e) {
        pollfd p{children_[i].pidfd(), POLLIN, 0};
        const bool died = ::poll(&p, 1, 0) > 0;
        if (died || std::chrono::steady_clock::now() > give_up) {
          std::ifstream in(dir_ / fmt::format("m{}.log", i));
          std::string line, tail;
          while (std::getline(in, line)) tail = line;
          throw std::runtime_error(std::string("etcd did not start: ") + e.what() + "; log: " + tail);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  TempDir dir_;
  std::optional<EtcdTls> tls_;
  std::vector<int> client_ports_, peer_ports_;
  std::string initial_cluster_;
  std::vector<sys::Child> children_;
};

}  // namespace holdfast::testing
