// Readiness: the --ready specs.
#include <arpa/inet.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>

#include "ensure/internal.hpp"
#include "holdfast/ensure.hpp"

namespace holdfast {

ReadySpec ReadySpec::parse(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return Error(std::string(text), "invalid --ready", why, exit_code::usage);
  };
  ReadySpec spec;
  auto rest_after = [&](std::string_view prefix) { return text.substr(prefix.size()); };
  if (text.empty() || text == "none") return spec;
  if (text == "notify") {
    spec.kind = Kind::notify;
  } else if (text.starts_with("fd:")) {
    auto num = rest_after("fd:");
    int n = 0;
    if (num.empty() || num.size() > 6) throw bad("expected fd:N");
    for (char c : num) {
      if (c < '0' || c > '9') throw bad("expected fd:N");
      n = n * 10 + (c - '0');
    }
    if (n < 3) throw bad("N must be 3 or more (0-2 are stdin/stdout/stderr)");
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        static_cast<rlim_t>(n) >= lim.rlim_cur) {
      throw bad("N must be below the descriptor limit (RLIMIT_NOFILE " + std::to_string(lim.rlim_cur) + ")");
    }
    spec.kind = Kind::fd;
    spec.fd = n;
  } else if (text.starts_with("tcp:")) {
    auto hp = rest_after("tcp:");
    auto colon = hp.rfind(':');
    if (colon == std::string_view::npos || colon == 0) throw bad("expected tcp:HOST:PORT");
    std::string host(hp.substr(0, colon));
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    auto port_text = hp.substr(colon + 1);
    long port = 0;
    if (port_text.empty() || port_text.size() > 5) throw bad("bad port");
    for (char c : port_text) {
      if (c < '0' || c > '9') throw bad("bad port");
      port = port * 10 + (c - '0');
    }
    if (port < 1 || port > 65535) throw bad("port out of range");
    spec.kind = Kind::tcp;
    spec.host = host;
    spec.port = static_cast<uint16_t>(port);
  } else if (text.starts_with("unix:")) {
    spec.kind = Kind::unix_socket;
    spec.path = std::string(rest_after("unix:"));
    if (spec.path.empty()) throw bad("expected unix:PATH");
  } else if (text.starts_with("file:")) {
    spec.kind = Kind::file;
    spec.path = std::string(rest_after("file:"));
    if (spec.path.empty()) throw bad("expected file:PATH");
  } else {
    throw bad("expected notify, fd:N, tcp:HOST:PORT, unix:PATH, file:PATH or none");
  }
  // Every client must mean the same file, whichever directory it runs in.
  if (!spec.path.empty() && spec.path.front() != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof cwd) == nullptr) throw bad("cannot resolve the relative path");
    spec.path = std::string(cwd) + "/" + spec.path;
  }
  return spec;
}

std::string ReadySpec::to_string() const {
  switch (kind) {
    case Kind::none: return "none";
    case Kind::notify: return "notify";
    case Kind::fd: return "fd:" + std::to_string(fd);
    case Kind::tcp:
      return "tcp:" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
             std::to_string(port);
    case Kind::unix_socket: return "unix:" + path;
    case Kind::file: return "file:" + path;
  }
  return "none";
}

bool ReadySpec::needs_name_service() const noexcept {
  if (kind != Kind::tcp) return false;
  unsigned char address[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, host.c_str(), address) != 1 && ::inet_pton(AF_INET6, host.c_str(), address) != 1;
}

}  // namespace holdfast
