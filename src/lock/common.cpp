// Pieces shared by every lock backend: target checks, records, heartbeat, polling.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::lock_internal {

Target resolve_target(const std::string& path) {
  if (path.empty()) throw Error("", "lock path", "empty path", exit_code::usage);
  if (path.back() == '/') throw Error(path, "lock path", "names a directory", exit_code::cant_create);
  Target t;
  t.path = path;
  t.dir = sys::dirname_of(path);
  t.base = sys::basename_of(path);
  struct stat st {};
  if (int rc = sys::stat_nothrow(t.dir, st); rc < 0) {
    if (rc == -ENOENT) throw Error(path, "cannot create lock file", "directory " + t.dir + " does not exist", exit_code::no_input);
    throw Error(-rc, t.dir, "cannot use lock directory");
  }
  if (!S_ISDIR(st.st_mode)) throw Error(path, "cannot create lock file", t.dir + " is not a directory", exit_code::no_input);
  if ((st.st_mode & S_ISVTX) && (st.st_mode & S_IWOTH)) t.extra_open_flags = O_NOFOLLOW;
  return t;
}

void throw_open_error(int err, const Target& target, const std::string& file) {
  if (err == ELOOP && target.extra_open_flags & O_NOFOLLOW) {
    throw Error(file, "refusing to open lock file",
                "it is a symbolic link in the sticky world-writable directory " + target.dir, exit_code::no_perm);
  }
  if (err == EISDIR) throw Error(file, "cannot use as lock file", "it is a directory", exit_code::cant_create);
  throw Error(err, file, "cannot open lock file");
}

Heartbeat::Heartbeat(int fd, std::chrono::milliseconds lease) {
  auto period = std::max(lease / 3, std::chrono::milliseconds(1));
  thread_ = std::thread([this, fd, period] {
    std::unique_lock lk(mu_);
    while (!cv_.wait_for(lk, period, [this] { return stop_; })) {
      ::futimens(fd, nullptr);  // mtime = now: "still alive" for hosts that cannot see our pid
    }
  });
}

Heartbeat::~Heartbeat() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

int64_t unix_ns_now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// Pads `text` (one record line) with spaces before its newline to at least `file_size` bytes,
// writes it at offset 0 of `fd` and updates `file_size`. Returns 0 or -errno.
int write_padded(int fd, std::string& text, off_t& file_size) {
  if (static_cast<off_t>(text.size()) < file_size) {
    // Pad before the final newline so the file stays one parseable line.
    text.pop_back();
    text.resize(static_cast<size_t>(file_size) - 1, ' ');
    text.push_back('\n');
  }
  if (int rc = sys::pwrite_all(fd, text, 0); rc < 0) return rc;
  file_size = std::max(file_size, static_cast<off_t>(text.size()));
  return 0;
}

}  // namespace

HolderRecord make_record(Backend backend, LockMode mode, const LockOptions& options) {
  HolderRecord r;
  r.processes.push_back(self_identity());
  // Unique per grant; getrandom(2) once per process, not per grant. A LockFile's later grants
  // take RecordCache::next_nonce.
  r.nonce = sys::unique_u64();
  r.backend = backend;
  r.mode = mode;
  r.acquired_unix_ns = unix_ns_now();
  r.command = cap_command(options.command);
  if (r.command.empty()) {
    static const std::vector<std::string> self_cmdline = [] {
      std::vector<std::string> argv;
      auto text = sys::read_file("/proc/self/cmdline", size_t{64} * 1024);
      if (!text) return argv;
      size_t start = 0;
      for (size_t i = 0; i < text->size(); ++i) {
        if ((*text)[i] == '\0') {
          argv.push_back(text->substr(start, i - start));
          start = i + 1;
        }
      }
      return cap_command(std::move(argv));
    }();
    r.command = self_cmdline;
  }
  r.lease_ms = options.stale_after.count();
  return r;
}

int write_record(int fd, const HolderRecord& record, off_t& file_size) {
  std::string text = record.to_json();
  return write_padded(fd, text, file_size);
}

void RecordCache::claim() noexcept {
  while (claimed_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
}

HolderRecord RecordCache::take(Backend backend, LockMode mode, const LockOptions& options) {
  const pid_t self = sys::current_pid();
  claim();
  if (pid_ == self && spare_) {
    HolderRecord r = std::move(*spare_);
    spare_.reset();
    unclaim();
    r.token = 0;
    r.nonce = next_nonce(self);
    r.acquired_unix_ns = unix_ns_now();
    return r;
  }
  unclaim();
  HolderRecord r = make_record(backend, mode, options);
  cache_tail(r, self);
  return r;
}

void RecordCache::cache_tail(const HolderRecord& record, pid_t self) {
  claim();
  if (pid_ != self) {
    // The tail is read only by the grant holding a record of this process (one grant at a time
    // per LockFile); a spare from before a fork names the parent.
    tail_.clear();
    append_record_tail(tail_, record);
    spare_.reset();
    pid_ = self;
  }
  unclaim();
}

HolderRecord* RecordCache::lend(Backend backend, LockMode mode, const LockOptions& options) {
  if (on_loan_.exchange(true, std::memory_order_acquire)) return nullptr;
  const pid_t self = sys::current_pid();
  if (lent_.processes.empty() || lent_.processes.front().pid != self) {
    // First loan in this process (or the first after a fork): the invariant part, made once.
    try {
      lent_ = make_record(backend, mode, options);
      cache_tail(lent_, self);
    } catch (...) {
      end_loan();
      throw;
    }
  } else if (lent_.processes.size() != 1) {
    lent_.processes.erase(lent_.processes.begin() + 1, lent_.processes.end());  // added by the last borrower
  }
  lent_.token = 0;
  lent_.nonce = next_nonce(self);
  return &lent_;
}

uint64_t RecordCache::next_nonce(pid_t self) noexcept {
  if (nonce_pid_.load(std::memory_order_relaxed) != self) {
    // First grant in this process (or after a fork). Two threads racing here each store a random
    // start; either way every fetch_add below returns a value of its own.
    nonce_next_.store(sys::unique_u64(), std::memory_order_relaxed);
    nonce_pid_.store(self, std::memory_order_relaxed);
  }
  return nonce_next_.fetch_add(1, std::memory_order_relaxed);
}

void RecordCache::give_back(HolderRecord&& record, bool unchanged) noexcept {
  if (!unchanged) return;
  const pid_t self = sys::current_pid();
  if (record.processes.empty() || record.processes.front().pid != self) return;
  claim();
  if (pid_ == self) spare_.emplace(std::move(record));
  unclaim();
}

const std::string& RecordCache::format(const HolderRecord& record, off_t file_size) {
  text_.clear();
  append_record_head(text_, record.token, record.nonce, record.acquired_unix_ns);
  text_.append(tail_);
  if (static_cast<off_t>(text_.size()) < file_size) {
    text_.pop_back();
    text_.resize(static_cast<size_t>(file_size) - 1, ' ');
    text_.push_back('\n');
  }
  return text_;
}

bool RecordCache::store(const HolderRecord& record, char* out, size_t size) {
  char head[kRecordHeadRoom];
  const size_t head_size = format_record_head(head, record.token, record.nonce, record.acquired_unix_ns, &head_);
  if (head_size + tail_.size() > size) return false;
  // As write_padded pads: spaces before the final newline, so the file stays one line.
  std::memcpy(out, head, head_size);
  std::memcpy(out + head_size, tail_.data(), tail_.size() - 1);
  std::memset(out + head_size + tail_.size() - 1, ' ', size - head_size - tail_.size());
  out[size - 1] = '\n';
  return true;
}

int RecordCache::write(int fd, const HolderRecord& record, off_t& file_size) {
  text_.clear();
  append_record_head(text_, record.token, record.nonce, record.acquired_unix_ns);
  text_.append(tail_);
  return write_padded(fd, text_, file_size);
}

bool poll_sleep(const WaitSpec& wait, int& attempt) {
  auto delay = poll_delay(wait, attempt);
  if (!delay) return false;
  std::this_thread::sleep_for(*delay);
  return true;
}

std::optional<std::chrono::microseconds> poll_delay(const WaitSpec& wait, int& attempt) {
  if (wait.kind == WaitSpec::none) return std::nullopt;
  thread_local std::minstd_rand rng(static_cast<unsigned>(sys::random_u64()));
  auto base = std::chrono::microseconds(1000) * (1 << std::min(attempt, 5));  // 1 ms .. 32 ms
  base = std::min(base, std::chrono::microseconds(25000));
  auto jitter = std::chrono::microseconds(rng() % static_cast<unsigned>(base.count() / 2 + 1));
  auto delay = base / 2 + jitter;
  ++attempt;
  auto now = Clock::now();
  if (wait.kind == WaitSpec::until) {
    if (now >= wait.deadline) return std::nullopt;
    delay = std::min(delay, std::chrono::duration_cast<std::chrono::microseconds>(wait.deadline - now));
  }
  return delay;
}

}  // namespace holdfast::lock_internal
