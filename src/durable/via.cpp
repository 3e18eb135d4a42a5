#include "durable/via.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
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
    line.bare_hex = true;
  } else if (first.size() == hex_length(DigestAlg::xxh128)) {
    line.digest = *Digest::parse("xxh128:" + std::string(first));
    line.bare_hex = true;
  } else {
    return std::nullopt;
  }
  return line;
}

namespace {

// Reaper side (after fork: async-signal-safe calls only).
volatile sig_atomic_t reaper_told_to_stop = 0;
void reaper_on_term(int /*sig*/) { reaper_told_to_stop = 1; }

// SIGKILLs every child of this process (listed by the kernel in /proc/thread-self/children; as
// a subreaper, orphaned descendants become children) and reaps them, until none is left.
void reaper_kill_descendants() {
  for (;;) {
    int fd = ::open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      char buf[4096];
      ssize_t n = ::read(fd, buf, sizeof buf - 1);
      ::close(fd);
      pid_t pid = 0;
      for (ssize_t i = 0; i < (n > 0 ? n : 0); ++i) {
        if (buf[i] >= '0' && buf[i] <= '9') {
          pid = pid * 10 + (buf[i] - '0');
        } else {
          if (pid > 0) ::kill(pid, SIGKILL);  // our own child: its pid cannot be reused before we reap it
          pid = 0;
        }
      }
      if (pid > 0) ::kill(pid, SIGKILL);
    } else {
      ::kill(-::getpgrp(), SIGKILL);  // no /proc: at least the process group (this kills us too)
    }
    if (::waitpid(-1, nullptr, 0) < 0 && errno == ECHILD) return;
  }
}

[[noreturn]] void reaper_main(const char* const* argv, char* const* envp, int out_w, int err_w) {
  ::setpgid(0, 0);  // own group, so the deadline's last resort kills ssh and friends too
  (void)::prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0UL, 0UL, 0UL);
  struct sigaction term {};
  term.sa_handler = reaper_on_term;  // no SA_RESTART: interrupts waitpid
  (void)::sigaction(SIGTERM, &term, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  (void)::sigaction(SIGPIPE, &dfl, nullptr);
  pid_t sh = ::fork();
  if (sh < 0) ::_exit(126);
  if (sh == 0) {
    (void)::sigaction(SIGTERM, &dfl, nullptr);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0 || ::dup2(devnull, 0) < 0 || ::dup2(out_w, 1) < 0 || ::dup2(err_w, 2) < 0) ::_exit(126);
    ::execve("/bin/sh", const_cast<char* const*>(argv), envp);
    ::_exit(127);
  }
  ::close(out_w);
  ::close(err_w);
  int status = 0;
  while (::waitpid(sh, &status, 0) < 0) {
    if (errno != EINTR) ::_exit(126);
    if (reaper_told_to_stop != 0) ::kill(sh, SIGKILL);
  }
  reaper_kill_descendants();
  if (WIFEXITED(status)) ::_exit(WEXITSTATUS(status));
  ::_exit(128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
}

}  // namespace

ViaOutput run_via(const std::string& command, const std::string& reader_path, const std::string& host_path,
                  const std::vector<DigestAlg>& algs, std::chrono::steady_clock::time_point deadline) {
  using Clock = std::chrono::steady_clock;
  ViaOutput result;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return result;
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return result;
  }
  // Everything the child needs is built before fork: after fork only async-signal-safe calls.
  std::string path_var = "HOLDFAST_PATH=" + reader_path;
  std::string host_var = "HOLDFAST_HOST_PATH=" + host_path;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view v(*e);
    if (v.starts_with("HOLDFAST_PATH=") || v.starts_with("HOLDFAST_HOST_PATH=")) continue;
    envp.push_back(*e);
  }
  envp.push_back(path_var.data());
  envp.push_back(host_var.data());
  envp.push_back(nullptr);
  const char* argv[] = {"sh", "-c", command.c_str(), "sh", reader_path.c_str(), nullptr};
  pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
    return result;
  }
  if (pid == 0) reaper_main(argv, envp.data(), out[1], err[1]);
  ::setpgid(pid, pid);
  ::close(out[1]);
  ::close(err[1]);

  std::vector<Hasher> hashers;
  hashers.reserve(algs.size());
  for (auto alg : algs) hashers.emplace_back(alg);
  std::vector<char> buf(size_t{1} << 16);
  std::string err_text;
  bool out_open = true, err_open = true;
  // The reaper closes both pipes (by exiting and killing everything that held them) once the
  // shell has exited, so EOF on both means "the command is done".
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
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
  if (result.timed_out) {
    // Let the reaper kill the shell and every descendant (setsid ones included); if it cannot
    // within a moment, SIGKILL the whole group.
    ::kill(pid, SIGTERM);
    int status = 0;
    bool reaped = false;
    for (int i = 0; i < 200 && !reaped; ++i) {
      pid_t w = ::waitpid(pid, &status, WNOHANG);
      reaped = w == pid || (w < 0 && errno != EINTR);
      if (!reaped) ::usleep(5000);
    }
    if (!reaped) {
      ::kill(-pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  } else {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.status = exit_status(status);
  }
  if (result.size > ViaOutput::kHeadLimit) result.head.clear();
  for (auto& h : hashers) result.digests.push_back(h.finish());
  result.err_line = err_text.substr(0, err_text.find('\n'));
  return result;
}

}  // namespace holdfast::durable
