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

#include "durable/abandonable.hpp"
#include "durable/flush.hpp"
#include "durable/via.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/inotify.hpp"

namespace holdfast {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// While the content matches and only the device is behind, the kernel's page-cache state is
// re-read this often (a cachestat(2) call, no data read); writeback already in flight is waited
// for with sync_file_range, which returns the moment the device completes it.
constexpr milliseconds kDevicePoll{2};

// A local wait whose content already matches follows the device on one helper thread, re-checking
// this often (open, fstat, two cachestat(2) calls: a few microseconds of CPU each time). There is
// no kernel event for "the flusher picked these dirty pages up"; once writeback is in flight,
// sync_file_range(WAIT_BEFORE) blocks until the device completes it, which is an event.
constexpr std::chrono::microseconds kDeviceFollowPoll{500};

milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

// start + timeout, saturating; milliseconds::max() (or anything beyond the clock's range) = never.
Clock::time_point deadline_after(Clock::time_point start, milliseconds timeout) {
  if (timeout >= std::chrono::duration_cast<milliseconds>(Clock::time_point::max() - start)) {
    return Clock::time_point::max();
  }
  return start + timeout;
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

// Everything one local wait keeps between checks. Owned through a shared_ptr by each check's
// helper thread, so an abandoned check (hung filesystem) never touches freed memory.
struct LocalState {
  std::string path;
  Expected expected;
  DeviceCheck mode = DeviceCheck::wait;
  // The inode whose content last matched: while it is unchanged, waiting for the device does not
  // re-read the data.
  bool have_match = false;
  struct stat matched_st {};
  std::optional<durable::DeviceProbe> probe;
  dev_t probe_dev = 0;
  sys::DirWatch watch;
  std::vector<std::string> names;
  bool events = false;
};

bool same_content_identity(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec &&
         a.st_ctim.tv_sec == b.st_ctim.tv_sec && a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

// Opens without updating the access time where permitted: an atime update would dirty the inode
// (and, on vfat/ext2, the device's cache) that the detector then waits for.
int open_for_reading(const std::string& path) {
  int fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_NOATIME);
  if (fd == -EPERM) fd = sys::open_nothrow(AT_FDCWD, path, O_RDONLY | O_NOCTTY | O_NONBLOCK);
  return fd;
}

// Adds the device verdict to an observation whose content matched in the page cache.
void judge_device(LocalState& s, Observation& obs, int fd, const struct stat& st) {
  obs.content_matched = true;
  if (s.mode == DeviceCheck::page_cache) {
    obs.matched = true;
    return;
  }
  if (!s.probe || s.probe_dev != st.st_dev) {
    s.probe.emplace(st);
    s.probe_dev = st.st_dev;
  }
  if (s.mode == DeviceCheck::push) {
    if (auto err = s.probe->push(fd, s.path); !err.empty()) {
      obs.device = "push failed: " + err;
      obs.differs = "content matches, but pushing it to the device failed: " + err;
      return;
    }
  }
  auto view = s.probe->look(fd);
  if (view.writeback_in_flight) {
    // Event-driven: returns when the device completes what is already submitted.
    s.probe->wait_in_flight(fd);
    view = s.probe->look(fd);
  }
  obs.device = view.detail;
  switch (view.state) {
    case durable::DeviceState::on_device:
    case durable::DeviceState::memory:
      obs.matched = true;
      return;
    case durable::DeviceState::pending:
      obs.device_pending = true;
      obs.differs = "content matches in the page cache, " + view.detail;
      return;
    case durable::DeviceState::unknown:
      break;
  }
  // No cachestat(2): an O_DIRECT read makes the kernel write the file's dirty range back first,
  // then reads what the device returns.
  std::string why;
  auto direct = durable::direct_digest(s.path, s.expected.digests.front().alg, why);
  if (direct && direct->size == s.expected.size && *s.expected.find(direct->digest.alg) == direct->digest) {
    obs.matched = true;
    obs.device = view.detail + "; an O_DIRECT read-back returned the expected bytes";
    return;
  }
  if (direct) {
    obs.matched = false;
    obs.device_pending = true;
    obs.differs = "content matches in the page cache, but an O_DIRECT read-back differs";
    return;
  }
  obs.matched = true;
  obs.device_unknown = true;
  obs.device = view.detail + "; O_DIRECT read-back: " + why + "; matched in this host's page cache only";
}

Observation observe_local(LocalState& s) {
  Observation obs;
  int fd = open_for_reading(s.path);
  if (fd < 0) {
    s.have_match = false;
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
  if (size != s.expected.size) {
    // Cheap early answer; the full check below never trusts st_size alone.
    s.have_match = false;
    obs.exists = true;
    obs.size = size;
    obs.differs = fmt::format("size {}/{}", size, s.expected.size);
    return obs;
  }
  if (s.have_match && same_content_identity(st, s.matched_st)) {
    obs.exists = true;
    obs.size = size;
    obs.digest = s.expected.digests.front();
  } else {
    s.have_match = false;
    try {
      auto got = digest_fd(fd, s.expected.digests.front().alg, s.path);
      judge_content(obs, s.expected, got.size, {got.digest});
    } catch (const Error& e) {
      obs.exists = true;
      obs.differs = fmt::format("read error: {}", e.error_number() != 0 ? std::generic_category().message(e.error_number())
                                                                      : std::string(e.what()));
      return obs;
    }
    if (!obs.matched) return obs;
    obs.matched = false;  // decided by the device below
    s.have_match = true;
    s.matched_st = st;
  }
  judge_device(s, obs, fd, st);
  return obs;
}

// A check started just before the deadline still gets this long before it counts as hung.
constexpr milliseconds kCheckGrace{200};

// One local check on a helper thread, abandoned at the deadline (or kCheckGrace after it started).
std::optional<Observation> observe_local_before(const std::shared_ptr<LocalState>& s, Clock::time_point deadline) {
  auto budget = std::max(deadline, Clock::now() + kCheckGrace);
  return durable::run_before<Observation>(budget, [s] { return observe_local(*s); });
}

// Follows a file whose content matched until its bytes reach the device, or the content changes,
// or `until`: the whole loop runs on one helper thread (no thread per check), abandoned like a
// single check if the filesystem hangs. The caller wakes the moment the thread returns.
std::optional<Observation> follow_device_before(const std::shared_ptr<LocalState>& s, Clock::time_point until) {
  // The loop's last check starts before `until`; like any single check it gets kCheckGrace.
  auto budget = until + kCheckGrace;
  return durable::run_before<Observation>(budget, [s, until] {
    for (;;) {
      auto obs = observe_local(*s);
      if (obs.matched || !obs.device_pending || Clock::now() >= until) return obs;
      std::this_thread::sleep_for(kDeviceFollowPoll);
    }
  });
}

Observation hung_observation() {
  Observation obs;
  obs.differs = "the filesystem did not answer before the deadline (a hung mount, or a very slow read)";
  return obs;
}

Observation observe_via(const std::string& path, const Expected& expected, const WaitOptions& options,
                        Clock::time_point deadline, int* exit_status) {
  Observation obs;
  auto out = durable::run_via(options.via, reader_name(path, options.via_map), path, algs_of(expected), deadline);
  if (exit_status != nullptr) *exit_status = out.status;
  if (out.timed_out) {
    obs.differs = "via command did not finish before the deadline";
    return obs;
  }
  if (out.status != 0) {
    obs.differs = fmt::format("via command exited {}{}{}", out.status, out.err_line.empty() ? "" : ": ", out.err_line);
    return obs;
  }
  std::string digest_differs;
  if (options.via_prints != ViaPrints::bytes && out.size <= durable::ViaOutput::kHeadLimit) {
    if (auto line = durable::parse_digest_line(out.head)) {
      obs.exists = true;
      obs.digest = line->digest;
      obs.size = line->size;
      const Digest* want = expected.find(line->digest.alg);
      if (want == nullptr) {
        digest_differs = fmt::format("via printed a {} digest but only {} of the expected content is known",
                                     to_string(line->digest.alg), to_string(expected.digests.front().alg));
      } else if (line->size && *line->size != expected.size) {
        digest_differs = fmt::format("size {}/{}", *line->size, expected.size);
      } else if (*want != line->digest) {
        digest_differs = fmt::format("digest mismatch ({} is {}, expected {}{})", to_string(want->alg),
                                     line->digest.hex.substr(0, 12), want->hex.substr(0, 12),
                                     line->bare_hex && want->alg == DigestAlg::xxh128
                                         ? "; 32 bare hex digits are read as xxh128, md5 is not supported"
                                         : "");
      } else {
        obs.matched = true;  // a digest of the full content: it covers the size too
        return obs;
      }
      if (options.via_prints == ViaPrints::digest) {
        obs.differs = digest_differs;
        return obs;
      }
      // auto: the output may also be the content itself (a one-line hex file, a .sha256 file):
      // it matches if either reading matches.
      obs = Observation{};
    }
  }
  if (options.via_prints == ViaPrints::digest) {
    obs.differs = "via command did not print a digest line (ALG:HEX or HEX  NAME)";
    return obs;
  }
  judge_content(obs, expected, out.size, out.digests);
  if (!obs.matched && !digest_differs.empty()) {
    obs.differs = fmt::format("{} (read as a digest line); as content: {}", digest_differs, obs.differs);
  }
  return obs;
}

Clock::time_point via_deadline(const WaitOptions& options, Clock::time_point deadline) {
  // Each run gets at least max(interval, 1s), so the final check at the deadline can finish.
  auto floor = Clock::now() + std::max(options.interval, milliseconds(1000));
  return std::max(deadline, floor);
}

// A via command that cannot run at all (126/127 on the first check) is reported at once.
void reject_unrunnable_via(const std::string& path, int status, const Observation& obs) {
  if (status == exit_code::not_found || status == exit_code::cannot_exec) {
    throw Error(path, "--via",
                fmt::format("{} ({})", status == exit_code::not_found ? "command not found" : "command cannot be executed",
                            obs.differs),
                status);
  }
}

}  // namespace

const Digest* Expected::find(DigestAlg alg) const noexcept {
  for (const auto& d : digests) {
    if (d.alg == alg) return &d;
  }
  return nullptr;
}

std::string reader_name(const std::string& path, const std::vector<std::pair<std::string, std::string>>& map) {
  for (const auto& [host, reader] : map) {
    std::string prefix = host;
    while (prefix.size() > 1 && prefix.back() == '/') prefix.pop_back();
    if (path == prefix) return reader;
    if (path.size() > prefix.size() && path.starts_with(prefix) && (prefix == "/" || path[prefix.size()] == '/')) {
      std::string rest = path.substr(prefix == "/" ? 1 : prefix.size() + 1);
      if (reader.empty()) return rest;
      return reader.back() == '/' ? reader + rest : reader + "/" + rest;
    }
  }
  return path;
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
  if (expected.digests.empty()) throw Error(path, "wait", "no expected digest", exit_code::usage);
  auto deadline = deadline_after(Clock::now(), options.timeout);
  if (!options.via.empty()) return observe_via(path, expected, options, via_deadline(options, deadline), nullptr);
  auto s = std::make_shared<LocalState>();
  s->path = path;
  s->expected = expected;
  s->mode = options.device;
  auto obs = observe_local_before(s, deadline);
  return obs ? *obs : hung_observation();
}

namespace {

WaitResult wait_local(const std::string& path, const Expected& expected, const WaitOptions& options,
                      Clock::time_point start, Clock::time_point deadline) {
  WaitResult result;
  auto s = std::make_shared<LocalState>();
  s->path = path;
  s->expected = expected;
  s->mode = options.device;
  s->names = {sys::basename_of(path)};
  // The watch is set up only after a first check that did not match: a wait that matches at once
  // (the common case after `write` or `sync`) then never creates inotify marks, whose teardown at
  // exit waits for an SRCU grace period (10-15 ms). The check right after the setup closes the
  // window in which a change could have gone unseen.
  bool watch_pending = options.use_inotify && s->watch.valid();
  auto set_up_watch = [&]() -> bool {
    // Path lookups can hang on a wedged filesystem: on the helper thread too.
    auto ok = durable::run_before<bool>(std::max(deadline, Clock::now() + kCheckGrace), [s] {
      if (s->watch.add(sys::dirname_of(s->path)) != 0) return false;
      // A symlink's target changes in its own directory: watch that too (best effort).
      if (char* real = ::realpath(s->path.c_str(), nullptr)) {
        std::string r = real;
        ::free(real);
        if (sys::dirname_of(r) != sys::dirname_of(s->path) && s->watch.add(sys::dirname_of(r)) == 0) {
          s->names.push_back(sys::basename_of(r));
        }
      }
      return true;
    });
    if (!ok) return false;
    s->events = *ok;
    result.used_inotify = *ok;
    return true;
  };
  bool follow_device = false;
  for (;;) {
    std::optional<Observation> obs;
    if (follow_device) {
      auto now = Clock::now();
      obs = follow_device_before(s, deadline - now < options.interval ? deadline : now + options.interval);
    } else {
      obs = observe_local_before(s, deadline);
    }
    ++result.checks;
    result.elapsed = since(start);
    if (!obs) {
      result.hung = true;
      // A check that did answer saw real state: that stays the answer, with a note that the last
      // one did not. Otherwise one slow final check (a loaded machine: it runs past the deadline
      // plus kCheckGrace) would replace "size 50000/100000" by "the filesystem did not answer".
      if (result.checks > 1) {
        result.last.differs += "; the last check did not answer before the deadline (a hung mount, or a very slow read)";
      } else {
        result.last = hung_observation();
      }
      return result;
    }
    result.last = std::move(*obs);
    if (options.on_check) options.on_check(result.last, result.elapsed);
    if (result.last.matched) {
      result.matched = true;
      return result;
    }
    auto now = Clock::now();
    if (now >= deadline) return result;
    follow_device = result.last.content_matched && result.last.device_pending;
    if (watch_pending && !follow_device) {
      watch_pending = false;
      if (!set_up_watch()) {
        result.hung = true;
        result.last = hung_observation();
        result.elapsed = since(start);
        return result;
      }
      continue;  // check again at once: a change before the watch existed is not missed
    }
    watch_pending = false;
    if (follow_device) {
      // Only the device is behind: follow it at once. Content changes are seen by the follower's
      // own checks, so inotify is no longer needed; dropping its watches now lets the kernel
      // free them while we wait, instead of in our close at exit (an SRCU grace period, 10-15
      // ms, that would delay the exit the caller is waiting for). Later content waits poll at
      // the interval.
      if (s->events) s->watch.remove_all();
      s->events = false;
      continue;
    }
    auto step = result.last.device_pending ? std::min(kDevicePoll, options.interval) : options.interval;
    auto wake = deadline - now < step ? deadline : now + step;
    auto pause = std::chrono::duration_cast<milliseconds>(wake - now) + milliseconds(1);
    if (s->events) {
      s->watch.wait(pause, s->names);
    } else {
      std::this_thread::sleep_for(pause);
    }
  }
}

// The host-side flush detector for a --via wait: whether the host's copy of `path` has reached
// the device. nullopt when it cannot tell (no such local file, no cachestat, a hung filesystem).
struct HostWatch {
  std::shared_ptr<LocalState> state;
  std::optional<bool> on_device(Clock::time_point deadline) {
    auto s = state;
    auto r = durable::run_before<std::optional<bool>>(deadline, [s]() -> std::optional<bool> {
      int fd = open_for_reading(s->path);
      if (fd < 0) return std::nullopt;
      sys::UniqueFd owned(fd);
      struct stat st {};
      if (sys::fstat_nothrow(fd, st) != 0) return std::nullopt;
      if (!s->probe || s->probe_dev != st.st_dev) {
        s->probe.emplace(st);
        s->probe_dev = st.st_dev;
      }
      auto view = s->probe->look(fd);
      if (view.state == durable::DeviceState::pending) return false;
      if (view.state == durable::DeviceState::on_device) return true;
      return std::nullopt;
    });
    return r ? *r : std::nullopt;
  }
};

WaitResult wait_via(const std::string& path, const Expected& expected, const WaitOptions& options,
                    Clock::time_point start, Clock::time_point deadline) {
  WaitResult result;
  HostWatch host{std::make_shared<LocalState>()};
  host.state->path = path;
  for (;;) {
    // Whether the host's copy was still on its way to the device when this reader check began:
    // if so, its arrival (even during the check) calls for another check at once.
    std::optional<bool> host_before = host.on_device(std::max(deadline, Clock::now() + kCheckGrace));
    int status = -1;
    result.last = observe_via(path, expected, options, via_deadline(options, deadline), &status);
    ++result.checks;
    if (result.checks == 1) reject_unrunnable_via(path, status, result.last);
    result.elapsed = since(start);
    if (options.on_check) options.on_check(result.last, result.elapsed);
    if (result.last.matched) {
      result.matched = true;
      return result;
    }
    auto now = Clock::now();
    if (now >= deadline) return result;
    auto wake = deadline - now < options.interval ? deadline : now + options.interval;
    if (host_before == false) {
      // Re-check the reader the moment the host's copy reaches the device, not at the interval.
      while (Clock::now() < wake && host.on_device(wake) == false) std::this_thread::sleep_for(kDevicePoll);
      continue;
    }
    auto left = wake - Clock::now();
    if (left > Clock::duration::zero()) std::this_thread::sleep_for(left);
  }
}

}  // namespace

WaitResult wait_for_content(const std::string& path, const Expected& expected, const WaitOptions& options) {
  if (expected.digests.empty()) throw Error(path, "wait", "no expected digest", exit_code::usage);
  auto start = Clock::now();
  auto deadline = deadline_after(start, options.timeout);
  if (options.via.empty()) return wait_local(path, expected, options, start, deadline);
  return wait_via(path, expected, options, start, deadline);
}

PendingResult wait_pending(const std::string& journal, const WaitOptions& options) {
  return wait_pending(journal, options, {});
}

std::string pending_obsolete(const PendingWrite& entry) {
  struct stat st {};
  if (int r = sys::lstat_nothrow(entry.path, st); r != 0) return r == -ENOENT ? "missing on this host" : "";
  if (!S_ISREG(st.st_mode)) return "replaced on this host by something that is not a regular file";
  if (entry.ino != 0 && static_cast<uint64_t>(st.st_ino) == entry.ino && sys::mtime_ns(st) == entry.mtime_ns &&
      static_cast<uint64_t>(st.st_size) == entry.size) {
    return "";
  }
  try {
    auto now = digest_file(entry.path, entry.digest.alg);
    if (now.size == entry.size && now.digest == entry.digest) return "";
  } catch (const Error&) {
    return "";
  }
  return "modified on this host after the recorded write";
}

namespace {
bool selected(const std::string& entry, const std::vector<std::string>& only) {
  if (only.empty()) return true;
  for (const auto& o : only) {
    std::string prefix = o;
    while (prefix.size() > 1 && prefix.back() == '/') prefix.pop_back();
    if (entry == prefix || (entry.starts_with(prefix) && (prefix == "/" || entry[prefix.size()] == '/'))) return true;
  }
  return false;
}
}  // namespace

PendingResult wait_pending(const std::string& journal, const WaitOptions& options, const std::vector<std::string>& only) {
  auto start = Clock::now();
  auto deadline = deadline_after(start, options.timeout);
  PendingResult result;
  std::vector<PendingWrite> todo = journal_read(journal);
  std::erase_if(todo, [&](const PendingWrite& e) { return !selected(e.path, only); });

  // One state per entry (each keeps its own "content already matched" memory).
  std::vector<std::shared_ptr<LocalState>> states;
  auto watch = std::make_shared<sys::DirWatch>();
  std::vector<std::string> names;
  bool events = options.via.empty() && options.use_inotify && watch->valid();
  for (const auto& e : todo) {
    auto s = std::make_shared<LocalState>();
    s->path = e.path;
    s->expected = Expected{e.size, {e.digest}};
    s->mode = options.device;
    states.push_back(s);
    names.push_back(sys::basename_of(e.path));
  }
  if (events) {
    auto dirs = std::make_shared<std::vector<std::string>>();
    for (const auto& e : todo) dirs->push_back(sys::dirname_of(e.path));
    auto ok = durable::run_before<bool>(std::max(deadline, Clock::now() + kCheckGrace), [watch, dirs] {
      for (const auto& d : *dirs) {
        if (watch->add(d) != 0) return false;
      }
      return true;
    });
    events = ok && *ok;
  }

  bool first = true;
  for (;;) {
    std::vector<PendingWrite> matched;
    std::vector<PendingWrite> dropped;
    result.remaining.clear();
    bool device_pending = false;
    for (size_t i = 0; i < todo.size(); ++i) {
      const auto& e = todo[i];
      Observation obs;
      if (options.via.empty()) {
        auto o = observe_local_before(states[i], deadline);
        obs = o ? *o : hung_observation();
      } else {
        int status = -1;
        obs = observe_via(e.path, states[i]->expected, options, via_deadline(options, deadline), &status);
        if (first) reject_unrunnable_via(e.path, status, obs);
      }
      if (obs.matched) {
        matched.push_back(e);
        continue;
      }
      // A host file that is gone, or was replaced by someone else after the recorded write, can
      // never match again: report it and drop it instead of blocking every later wait.
      auto check = durable::run_before<std::string>(std::max(deadline, Clock::now() + kCheckGrace), [e] { return pending_obsolete(e); });
      if (auto why = check.value_or(""); !why.empty()) {
        dropped.push_back(e);
        result.dropped.emplace_back(e, why);
        continue;
      }
      device_pending = device_pending || obs.device_pending;
      result.remaining.emplace_back(e, obs);
    }
    first = false;
    std::vector<PendingWrite> done = matched;
    done.insert(done.end(), dropped.begin(), dropped.end());
    journal_remove(journal, done);
    result.cleared.insert(result.cleared.end(), matched.begin(), matched.end());
    for (size_t i = todo.size(); i-- > 0;) {
      if (std::find(done.begin(), done.end(), todo[i]) != done.end()) {
        todo.erase(todo.begin() + static_cast<std::ptrdiff_t>(i));
        states.erase(states.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
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
    // Every entry left matches and waits only for the device: content events are no longer
    // needed, and dropping the watches now spares the exit an SRCU grace period (see wait_local).
    if (events && std::all_of(result.remaining.begin(), result.remaining.end(), [](const auto& r) {
          return r.second.content_matched && r.second.device_pending;
        })) {
      watch->remove_all();
      events = false;
    }
    auto step = device_pending ? std::min(kDevicePoll, options.interval) : options.interval;
    auto wake = deadline - now < step ? deadline : now + step;
    auto pause = std::chrono::duration_cast<milliseconds>(wake - now) + milliseconds(1);
    if (events) {
      watch->wait(pause, names);
    } else {
      std::this_thread::sleep_for(pause);
    }
  }
}

}  // namespace holdfast
