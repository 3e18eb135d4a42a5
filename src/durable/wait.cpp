#include "holdfast/wait.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <system_error>
#include <thread>
#include <fmt/format.h>

#include "durable/via.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/inotify.hpp"

namespace holdfast {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

std::vector<DigestAlg> algs_of(const Expected& e) {
  std::vector<DigestAlg> algs;
  for (const auto& d : e.digests) algs.push_back(d.alg);
  return algs;
}

// Compares a full-content observation (size + digests of the same bytes) with `expected`.
void judge_content(Observation& obs, const Expected& expected, uint64_t size, const std::vector<Digest>& digests) {
  obs.exists = true;
  obs.size = size;
  if (!digests.empty()) obs.digest = digests.front();
  if (size != expected.size) {
    obs.differs = fmt::format("size {}/{}", size, expected.size);
    return;
  }
  for (const auto& d : digests) {
    const Digest* want = expected.find(d.alg);
    if (want == nullptr) continue;
    obs.digest = d;
    if (*want != d) {
      obs.differs = fmt::format("digest mismatch (size {} matches; {} is {}, expected {})", size,
                                to_string(d.alg), d.hex.substr(0, 12), want->hex.substr(0, 12));
      return;
    }
    obs.matched = true;
    return;
  }
  obs.differs = "no comparable digest";
}

Observation observe_local(const std::string& path, const Expected& expected) {
  Observation obs;
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    obs.differs = fd == -ENOENT ? "missing" : fmt::format("unreadable: {}", std::generic_category().message(-fd));
    return obs;
  }
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) != 0 || !S_ISREG(st.st_mode)) {
    obs.exists = true;
    obs.differs = "not a regular file";
    return obs;
  }
  auto size = static_cast<uint64_t>(st.st_size);
  if (size != expected.size) {
    // Cheap early answer; the full check below never trusts st_size alone.
    obs.exists = true;
    obs.size = size;
    obs.differs = fmt::format("size {}/{}", size, expected.size);
    return obs;
  }
  try {
    auto got = digest_fd(fd, expected.digests.front().alg, path);
    judge_content(obs, expected, got.size, {got.digest});
  } catch (const Error& e) {
    obs.exists = true;
    obs.differs = fmt::format("read error: {}", e.error_number() != 0 ? std::generic_category().message(e.error_number())
                                                                    : std::string(e.what()));
  }
  return obs;
}

Observation observe_via(const std::string& path, const Expected& expected, const WaitOptions& options,
                        Clock::time_point deadline) {
  Observation obs;
  auto out = durable::run_via(options.via, path, algs_of(expected), deadline);
  if (out.timed_out) {
    obs.differs = "via command did not finish before the deadline";
    return obs;
  }
  if (out.status != 0) {
    obs.differs = fmt::format("via command exited {}{}{}", out.status, out.err_line.empty() ? "" : ": ", out.err_line);
    return obs;
  }
  if (options.via_prints != ViaPrints::bytes && out.size <= durable::ViaOutput::kHeadLimit) {
    if (auto line = durable::parse_digest_line(out.head)) {
      obs.exists = true;
      obs.digest = line->digest;
      obs.size = line->size;
      const Digest* want = expected.find(line->digest.alg);
      if (want == nullptr) {
        obs.differs = fmt::format("via printed a {} digest but only {} of the expected content is known",
                                  to_string(line->digest.alg), to_string(expected.digests.front().alg));
      } else if (line->size && *line->size != expected.size) {
        obs.differs = fmt::format("size {}/{}", *line->size, expected.size);
      } else if (*want != line->digest) {
        obs.differs = fmt::format("digest mismatch ({} is {}, expected {})", to_string(want->alg),
                                  line->digest.hex.substr(0, 12), want->hex.substr(0, 12));
      } else {
        obs.matched = true;  // a digest of the full content: it covers the size too
      }
      return obs;
    }
  }
  if (options.via_prints == ViaPrints::digest) {
    obs.differs = "via command did not print a digest line (ALG:HEX or HEX  NAME)";
    return obs;
  }
  judge_content(obs, expected, out.size, out.digests);
  return obs;
}

Observation observe_until(const std::string& path, const Expected& expected, const WaitOptions& options,
                          Clock::time_point deadline) {
  if (expected.digests.empty()) throw Error(path, "wait", "no expected digest", exit_code::usage);
  if (options.via.empty()) return observe_local(path, expected);
  // Each run gets at least max(interval, 1s), so the final check at the deadline can finish.
  auto floor = Clock::now() + std::max(options.interval, milliseconds(1000));
  return observe_via(path, expected, options, std::max(deadline, floor));
}

}  // namespace

const Digest* Expected::find(DigestAlg alg) const noexcept {
  for (const auto& d : digests) {
    if (d.alg == alg) return &d;
  }
  return nullptr;
}

Expected expected_from_file(const std::string& path, const std::vector<DigestAlg>& algs) {
  auto fd = sys::open_or_throw(AT_FDCWD, path, O_RDONLY | O_NOCTTY, 0, "open source");
  Expected e;
  std::vector<Hasher> hashers;
  hashers.reserve(algs.size());
  for (auto alg : algs) hashers.emplace_back(alg);
  constexpr size_t kBuf = size_t{1} << 20;
  std::unique_ptr<char[]> buf(new char[kBuf]);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.get(), kBuf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(errno, path, "read source");
    }
    if (n == 0) break;
    for (auto& h : hashers) h.update(std::string_view(buf.get(), static_cast<size_t>(n)));
    e.size += static_cast<uint64_t>(n);
  }
  for (auto& h : hashers) e.digests.push_back(h.finish());
  return e;
}

Observation observe(const std::string& path, const Expected& expected, const WaitOptions& options) {
  return observe_until(path, expected, options, Clock::now() + options.timeout);
}

WaitResult wait_for_content(const std::string& path, const Expected& expected, const WaitOptions& options) {
  auto start = Clock::now();
  auto deadline = start + options.timeout;
  WaitResult result;
  sys::DirWatch watch;
  std::vector<std::string> names{sys::basename_of(path)};
  if (options.via.empty() && options.use_inotify && watch.valid() && watch.add(sys::dirname_of(path)) == 0) {
    result.used_inotify = true;
    // A symlink's target changes in its own directory: watch that too (best effort).
    if (char* real = ::realpath(path.c_str(), nullptr)) {
      std::string r = real;
      ::free(real);
      if (sys::dirname_of(r) != sys::dirname_of(path) && watch.add(sys::dirname_of(r)) == 0) {
        names.push_back(sys::basename_of(r));
      }
    }
  }
  for (;;) {
    result.last = observe_until(path, expected, options, deadline);
    ++result.checks;
    result.elapsed = since(start);
    if (options.on_check) options.on_check(result.last, result.elapsed);
    if (result.last.matched) {
      result.matched = true;
      return result;
    }
    auto now = Clock::now();
    if (now >= deadline) return result;
    auto wake = std::min(now + options.interval, deadline);
    auto pause = std::chrono::duration_cast<milliseconds>(wake - now) + milliseconds(1);
    if (result.used_inotify) {
      watch.wait(pause, names);
    } else {
      std::this_thread::sleep_for(pause);
    }
  }
}

PendingResult wait_pending(const std::string& journal, const WaitOptions& options) {
  auto start = Clock::now();
  auto deadline = start + options.timeout;
  PendingResult result;
  std::vector<PendingWrite> todo = journal_read(journal);

  sys::DirWatch watch;
  std::vector<std::string> names;
  bool events = options.via.empty() && options.use_inotify && watch.valid();
  for (const auto& e : todo) {
    names.push_back(sys::basename_of(e.path));
    if (events && watch.add(sys::dirname_of(e.path)) != 0) events = false;
  }

  for (;;) {
    std::vector<PendingWrite> matched;
    result.remaining.clear();
    for (const auto& e : todo) {
      Expected expected{e.size, {e.digest}};
      auto obs = observe_until(e.path, expected, options, deadline);
      if (obs.matched) {
        matched.push_back(e);
      } else {
        result.remaining.emplace_back(e, obs);
      }
    }
    journal_remove(journal, matched);
    result.cleared.insert(result.cleared.end(), matched.begin(), matched.end());
    std::erase_if(todo, [&](const PendingWrite& e) { return std::find(matched.begin(), matched.end(), e) != matched.end(); });
    result.elapsed = since(start);
    if (options.on_check && !result.remaining.empty()) {
      Observation summary = result.remaining.front().second;
      summary.differs = fmt::format("{} pending; {}: {}", result.remaining.size(), result.remaining.front().first.path,
                                    summary.differs);
      options.on_check(summary, result.elapsed);
    }
    if (todo.empty()) {
      result.all_matched = true;
      return result;
    }
    auto now = Clock::now();
    if (now >= deadline) return result;
    auto wake = std::min(now + options.interval, deadline);
    auto pause = std::chrono::duration_cast<milliseconds>(wake - now) + milliseconds(1);
    if (events) {
      watch.wait(pause, names);
    } else {
      std::this_thread::sleep_for(pause);
    }
  }
}

}  // namespace holdfast
