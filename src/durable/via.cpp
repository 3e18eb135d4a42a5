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

#include <fmt/format.h>

#include "sys/env_marker.hpp"
#include "sys/file.hpp"
#include "sys/spawn.hpp"

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
  if (auto tagged = parse_tagged_line(text)) return DigestLine{tagged->digest, std::nullopt, false};
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
    line.bare_hex = true;
  } else if (first.size() == hex_length(DigestAlg::xxh128)) {
    line.digest = *Digest::parse("xxh128:" + std::string(first));
    line.bare_hex = true;
  } else {
    return std::nullopt;
  }
  return line;
}

ViaOutput run_via(const std::string& command, const std::string& reader_path, const std::string& host_path,
                  const std::vector<DigestAlg>& algs, std::chrono::steady_clock::time_point deadline) {
  using Clock = std::chrono::steady_clock;
  ViaOutput result;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return result;
  sys::UniqueFd out_r(out[0]), out_w(out[1]);
  if (::pipe2(err, O_CLOEXEC) != 0) return result;
  sys::UniqueFd err_r(err[0]), err_w(err[1]);
  sys::UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull) return result;

  // Every descendant inherits this entry, so one that leaves the process group (setsid, ssh -f,
  // a ControlPersist master) is still found and killed once the command is done.
  std::string marker = fmt::format("HOLDFAST_VIA_RUN={:016x}{:016x}", sys::random_u64(), sys::random_u64());
  sys::SpawnRequest req;
  req.executable = "/bin/sh";
  req.argv = {"sh", "-c", command, "sh", reader_path};
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("HOLDFAST_PATH=") || v.starts_with("HOLDFAST_HOST_PATH=") || v.starts_with("HOLDFAST_VIA_RUN=")) continue;
    req.env.emplace_back(v);
  }
  req.env.push_back("HOLDFAST_PATH=" + reader_path);
  req.env.push_back("HOLDFAST_HOST_PATH=" + host_path);
  req.env.push_back(marker);
  req.fds = {{0, devnull.get()}, {1, out_w.get()}, {2, err_w.get()}};
  req.session = sys::SpawnRequest::Session::new_process_group;  // a timeout kills ssh and friends too
  sys::Child child;
  try {
    child = sys::spawn(req);
  } catch (const Error& e) {
    result.status = e.exit_code();
    result.err_line = e.what();
    return result;
  }
  out_w.reset();
  err_w.reset();
  pid_t group = child.pid();
  // Everything the command left behind: its process group, and whatever carries the marker.
  auto kill_leftovers = [&] {
    ::kill(-group, SIGKILL);
    (void)sys::kill_processes_with_env(marker);
  };

  std::vector<Hasher> hashers;
  hashers.reserve(algs.size());
  for (auto alg : algs) hashers.emplace_back(alg);
  std::vector<char> buf(size_t{1} << 16);
  std::string err_text;
  bool out_open = true, err_open = true, exited = false;
  Clock::time_point drain_until{};
  // Done when the shell EXITS (its pidfd becomes readable), not when the pipes close: a
  // descendant may hold them open indefinitely. Output still in flight gets kDrain to arrive.
  constexpr auto kDrain = std::chrono::milliseconds(100);
  while (out_open || err_open) {
    auto now = Clock::now();
    if (exited && now >= drain_until) break;
    auto until = exited ? std::min(drain_until, deadline) : deadline;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now);
    if (!exited && left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    pollfd fds[3] = {{out_open ? out_r.get() : -1, POLLIN, 0},
                     {err_open ? err_r.get() : -1, POLLIN, 0},
                     {exited ? -1 : child.pidfd(), POLLIN, 0}};
    int r = ::poll(fds, 3, static_cast<int>(std::clamp<int64_t>(left.count() + 1, 0, 1 << 30)));
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if ((fds[2].revents & POLLIN) != 0) {
      exited = true;
      drain_until = Clock::now() + kDrain;
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
  kill_leftovers();
  int status = child.wait();
  if (!result.timed_out) result.status = exit_status(status);
  if (result.size > ViaOutput::kHeadLimit) result.head.clear();
  for (auto& h : hashers) result.digests.push_back(h.finish());
  result.err_line = err_text.substr(0, err_text.find('\n'));
  return result;
}

}  // namespace holdfast::durable
