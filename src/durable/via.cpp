#include "durable/via.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <string_view>

extern "C" char** environ;  // unistd.h declares it only under _GNU_SOURCE

namespace holdfast::durable {

namespace {

bool is_hex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}

int exit_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::optional<DigestLine> parse_digest_line(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  if (text.empty() || text.find('\n') != std::string_view::npos) return std::nullopt;
  if (text.front() == '\\') text.remove_prefix(1);  // sha256sum marks escaped names this way
  auto end = text.find_first_of(" \t");
  std::string_view first = text.substr(0, end);
  std::string_view rest = end == std::string_view::npos ? std::string_view{} : text.substr(end);
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);

  DigestLine line;
  if (first.find(':') != std::string_view::npos) {
    auto d = Digest::parse(first);
    if (!d) return std::nullopt;
    line.digest = *d;
    if (!rest.empty()) {
      uint64_t size = 0;
      auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), size);
      if (ec == std::errc{} && p == rest.data() + rest.size()) line.size = size;
    }
    return line;
  }
  if (!is_hex(first)) return std::nullopt;
  if (first.size() == hex_length(DigestAlg::sha256)) {
    line.digest = *Digest::parse("sha256:" + std::string(first));
  } else if (first.size() == hex_length(DigestAlg::xxh128)) {
    line.digest = *Digest::parse("xxh128:" + std::string(first));
  } else {
    return std::nullopt;
  }
  return line;
}

ViaOutput run_via(const std::string& command, const std::string& path, const std::vector<DigestAlg>& algs,
                  std::chrono::steady_clock::time_point deadline) {
  ViaOutput result;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return result;
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return result;
  }
  // Everything the child needs is built before fork: after fork only async-signal-safe calls.
  std::string path_var = "HOLDFAST_PATH=" + path;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with("HOLDFAST_PATH=")) continue;
    envp.push_back(*e);
  }
  envp.push_back(path_var.data());
  envp.push_back(nullptr);
  const char* argv[] = {"sh", "-c", command.c_str(), "sh", path.c_str(), nullptr};
  pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
    return result;
  }
  if (pid == 0) {
    ::setpgid(0, 0);  // own group, so a timeout kills ssh and friends too
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    (void)::sigaction(SIGPIPE, &dfl, nullptr);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::execve("/bin/sh", const_cast<char* const*>(argv), envp.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(out[1]);
  ::close(err[1]);

  std::vector<Hasher> hashers;
  hashers.reserve(algs.size());
  for (auto alg : algs) hashers.emplace_back(alg);
  std::vector<char> buf(size_t{1} << 16);
  std::string err_text;
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      break;
    }
    pollfd fds[2] = {{out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0}};
    int r = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count() + 1, 1 << 30)));
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      std::string_view chunk(buf.data(), static_cast<size_t>(n));
      if (i == 0) {
        for (auto& h : hashers) h.update(chunk);
        if (result.size + chunk.size() <= ViaOutput::kHeadLimit) result.head.append(chunk);
        result.size += chunk.size();
      } else if (err_text.size() < 1024) {
        err_text.append(chunk.substr(0, 1024 - err_text.size()));
      }
    }
  }
  ::close(out[0]);
  ::close(err[0]);
  if (result.size > ViaOutput::kHeadLimit) result.head.clear();
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = result.timed_out ? -1 : exit_status(status);
  for (auto& h : hashers) result.digests.push_back(h.finish());
  result.err_line = err_text.substr(0, err_text.find('\n'));
  return result;
}

}  // namespace holdfast::durable
