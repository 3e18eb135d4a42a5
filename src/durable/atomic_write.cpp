#include "holdfast/atomic_write.hpp"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <fmt/format.h>

#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"
#include "sys/file.hpp"

namespace holdfast {

namespace {

std::string hex16(uint64_t v) { return fmt::format("{:016x}", v); }

// ".BASE.holdfast-tmp.HEX16", with BASE shortened so the name stays under NAME_MAX.
std::string temp_name(const std::string& base) {
  return "." + base.substr(0, 200) + std::string(kTempMarker) + hex16(sys::random_u64());
}

bool sticky_world_writable(const struct stat& dir) {
  return (dir.st_mode & S_ISVTX) != 0 && (dir.st_mode & S_IWOTH) != 0;
}

int64_t now_unix_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

struct AtomicWriter::State {
  std::string requested;   // the path the caller named (for messages)
  std::string target;      // after following symlinks
  std::string dir;
  std::string base;
  sys::UniqueFd dirfd;
  sys::UniqueFd tmpfd;
  std::string tmpname;     // empty while an O_TMPFILE file has no name
  bool anonymous = false;  // O_TMPFILE
  WriteOptions options;
  std::optional<Hasher> hasher;
  uint64_t bytes = 0;
  bool finished = false;

  void discard() noexcept {
    tmpfd.reset();
    if (!tmpname.empty() && dirfd) ::unlinkat(dirfd.get(), tmpname.c_str(), 0);
    tmpname.clear();
    finished = true;
  }
};

AtomicWriter::AtomicWriter(std::unique_ptr<State> state) noexcept : state_(std::move(state)) {}
AtomicWriter::AtomicWriter(AtomicWriter&&) noexcept = default;
AtomicWriter& AtomicWriter::operator=(AtomicWriter&& other) noexcept {
  if (this != &other) {
    abort();
    state_ = std::move(other.state_);
  }
  return *this;
}
AtomicWriter::~AtomicWriter() { abort(); }

const std::string& AtomicWriter::target() const noexcept { return state_->target; }
uint64_t AtomicWriter::bytes_written() const noexcept { return state_->bytes; }

AtomicWriter AtomicWriter::open(const std::string& path, const WriteOptions& options) {
  auto s = std::make_unique<State>();
  s->requested = path;
  s->options = options;
  if (path.empty()) throw Error(path, "write", "empty path", exit_code::usage);

  // Resolve the target: follow symlinks ourselves so the sticky-directory rule applies at each hop.
  std::string current = path;
  struct stat existing {};
  bool exists = false;
  for (int hops = 0;; ++hops) {
    if (hops > 40) throw Error(ELOOP, path, "resolve symlinks");
    if (current.back() == '/') throw Error(EISDIR, path, "replace");
    s->dir = sys::dirname_of(current);
    s->base = sys::basename_of(current);
    if (s->base == "." || s->base == "..") throw Error(EISDIR, path, "replace");
    int dfd = sys::open_nothrow(AT_FDCWD, s->dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) throw Error(-dfd, path, "open parent directory " + s->dir);
    s->dirfd.reset(dfd);
    if (::fstatat(dfd, s->base.c_str(), &existing, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) throw Error(errno, path, "stat");
      exists = false;
      break;
    }
    exists = true;
    if (S_ISDIR(existing.st_mode)) throw Error(EISDIR, path, "replace");
    if (S_ISLNK(existing.st_mode)) {
      struct stat dst {};
      if (sys::fstat_nothrow(dfd, dst) == 0 && sticky_world_writable(dst)) {
        throw Error(path, "refusing to follow symlink",
                    "it is in sticky world-writable directory " + s->dir + " (symlink attack risk)",
                    exit_code::no_perm);
      }
      char buf[PATH_MAX];
      ssize_t n = ::readlinkat(dfd, s->base.c_str(), buf, sizeof buf - 1);
      if (n < 0) throw Error(errno, path, "readlink");
      std::string link(buf, static_cast<size_t>(n));
      current = link.front() == '/' ? link : s->dir + "/" + link;
      continue;
    }
    if (!S_ISREG(existing.st_mode)) {
      throw Error(path, "replace", "not a regular file (device, FIFO or socket)", exit_code::cant_create);
    }
    break;
  }
  s->target = current;
  if (options.record) {
    // The journal names files absolutely so `wait --pending` works from any directory.
    char* real = ::realpath(s->dir.c_str(), nullptr);
    if (real == nullptr) throw Error(errno, path, "realpath " + s->dir);
    std::string abs = real;
    ::free(real);
    s->target = (abs == "/" ? "" : abs) + "/" + s->base;
    s->hasher.emplace(options.record_alg);
  }

  mode_t create_mode = exists ? (existing.st_mode & 07777) : options.mode ? *options.mode : 0666;
  int fd = sys::open_nothrow(s->dirfd.get(), ".", O_TMPFILE | O_WRONLY, create_mode);
  if (fd >= 0) {
    s->anonymous = true;
  } else if (fd == -EOPNOTSUPP || fd == -EISDIR || fd == -EINVAL) {
    // No O_TMPFILE here (FUSE, NFS, old kernels): a named, exclusive temp file instead.
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::string name = temp_name(s->base);
      fd = sys::open_nothrow(s->dirfd.get(), name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW, create_mode);
      if (fd != -EEXIST) {
        if (fd >= 0) s->tmpname = name;
        break;
      }
    }
  }
  if (fd < 0) throw Error(-fd, path, "create temp file in " + s->dir);
  s->tmpfd.reset(fd);

  if (exists && (existing.st_uid != ::geteuid() || existing.st_gid != ::getegid())) {
    // Keep the owner when permitted (root), else at least the group; otherwise we become the owner.
    if (::fchown(fd, existing.st_uid, existing.st_gid) != 0) (void)::fchown(fd, static_cast<uid_t>(-1), existing.st_gid);
  }
  if (options.mode || exists) {
    // After fchown (which may clear set-id bits); exact, without the umask.
    if (::fchmod(fd, create_mode) != 0) {
      int err = errno;
      s->discard();
      throw Error(err, path, "set mode of temp file");
    }
  }
  return AtomicWriter(std::move(s));
}

void AtomicWriter::write(std::string_view chunk) {
  State& s = *state_;
  if (s.finished) throw Error(s.requested, "write", "writer already committed or aborted", exit_code::software);
  int r = sys::write_all(s.tmpfd.get(), chunk);
  if (r < 0) {
    s.discard();
    throw Error(-r, s.requested, "write temp file (target untouched)");
  }
  if (s.hasher) s.hasher->update(chunk);
  s.bytes += chunk.size();
}

void AtomicWriter::commit() {
  State& s = *state_;
  if (s.finished) throw Error(s.requested, "commit", "writer already committed or aborted", exit_code::software);
  auto fail = [&](int err, const std::string& what) {
    s.discard();
    throw Error(err, s.requested, what + " (target untouched)");
  };
  if (s.options.sync) {
    int r = sys::fsync_nothrow(s.tmpfd.get());
    if (r < 0) fail(-r, "fsync temp file");
  }
  if (s.anonymous) {
    // Give the O_TMPFILE inode a name just long enough to rename it over the target. AT_EMPTY_PATH
    // is one cheap call but needs CAP_DAC_READ_SEARCH; /proc/self/fd works for everyone.
    static std::atomic<bool> empty_path_works{true};
    std::string proc = "/proc/self/fd/" + std::to_string(s.tmpfd.get());
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::string name = temp_name(s.base);
      int r = -1;
      if (empty_path_works.load(std::memory_order_relaxed)) {
        r = ::linkat(s.tmpfd.get(), "", s.dirfd.get(), name.c_str(), AT_EMPTY_PATH);
        if (r != 0 && (errno == ENOENT || errno == EPERM)) empty_path_works.store(false, std::memory_order_relaxed);
      }
      if (r != 0 && !empty_path_works.load(std::memory_order_relaxed)) {
        r = ::linkat(AT_FDCWD, proc.c_str(), s.dirfd.get(), name.c_str(), AT_SYMLINK_FOLLOW);
      }
      if (r == 0) {
        s.tmpname = name;
        break;
      }
      if (errno != EEXIST) fail(errno, "link temp file");
    }
    if (s.tmpname.empty()) fail(EEXIST, "link temp file");
  }
  // close(2) can report deferred write errors (NFS); check it before the content becomes visible.
  int fd = s.tmpfd.release();
  if (::close(fd) != 0 && errno != EINTR) fail(errno, "close temp file");
  if (::renameat(s.dirfd.get(), s.tmpname.c_str(), s.dirfd.get(), s.base.c_str()) != 0) {
    fail(errno, "rename temp file over target");
  }
  s.tmpname.clear();
  s.finished = true;
  if (s.options.sync) {
    int r = sys::fsync_nothrow(s.dirfd.get());
    if (r < 0) {
      throw Error(-r, s.requested,
                  "fsync directory " + s.dir + " after rename (new content in place, durability unknown)");
    }
  }
  if (s.hasher) {
    std::string journal = s.options.journal.empty() ? default_journal_path() : s.options.journal;
    journal_record(journal, PendingWrite{s.target, s.bytes, s.hasher->finish(), now_unix_ns()});
  }
}

void AtomicWriter::abort() noexcept {
  if (state_ && !state_->finished) state_->discard();
}

void atomic_write(const std::string& path, std::string_view data, const WriteOptions& options) {
  auto w = AtomicWriter::open(path, options);
  w.write(data);
  w.commit();
}

}  // namespace holdfast
