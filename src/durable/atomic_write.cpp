#include "holdfast/atomic_write.hpp"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <system_error>
#include <fmt/format.h>

#include "durable/write_fence.hpp"
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

std::string errno_text(int err) { return std::generic_category().message(err); }

// Gives the temp file `fd` the owner and group of `existing`. "" on success, else why not: a
// replace that silently changed the owner would hand the file to whoever wrote it last.
std::string keep_owner(int fd, const struct stat& existing) {
  if (existing.st_uid == ::geteuid() && existing.st_gid == ::getegid()) return {};
  if (::fchown(fd, existing.st_uid, existing.st_gid) == 0) return {};
  int err = errno;
  if (existing.st_uid == ::geteuid() && ::fchown(fd, static_cast<uid_t>(-1), existing.st_gid) == 0) return {};
  return fmt::format("cannot keep owner {}:{} ({}): only its owner or root can replace it in place", existing.st_uid,
                     existing.st_gid, errno_text(err));
}

// Copies every extended attribute the caller can see on `from` (POSIX ACLs, user.*,
// security.selinux, security.capability, trusted.* for root) to `to`. An attribute the new file
// already has with the same value (e.g. an SELinux label from the directory's default) is left
// alone. "" on success, else which attribute could not be kept and why.
std::string copy_xattrs(const std::string& from, int to) {
  ssize_t n = ::llistxattr(from.c_str(), nullptr, 0);
  if (n < 0) return errno == ENOTSUP ? "" : fmt::format("list extended attributes: {}", errno_text(errno));
  std::string names(static_cast<size_t>(n), '\0');
  n = ::llistxattr(from.c_str(), names.data(), names.size());
  if (n < 0) return fmt::format("list extended attributes: {}", errno_text(errno));
  names.resize(static_cast<size_t>(n));
  for (size_t pos = 0; pos < names.size();) {
    std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    if (name.empty()) continue;
    ssize_t len = ::lgetxattr(from.c_str(), name.c_str(), nullptr, 0);
    if (len < 0) return fmt::format("read extended attribute {}: {}", name, errno_text(errno));
    std::string value(static_cast<size_t>(len), '\0');
    len = ::lgetxattr(from.c_str(), name.c_str(), value.data(), value.size());
    if (len < 0) return fmt::format("read extended attribute {}: {}", name, errno_text(errno));
    value.resize(static_cast<size_t>(len));
    std::string have(value.size() + 1, '\0');
    ssize_t hl = ::fgetxattr(to, name.c_str(), have.data(), have.size());
    if (hl == len && have.compare(0, value.size(), value) == 0) continue;
    if (::fsetxattr(to, name.c_str(), value.data(), value.size(), 0) != 0) {
      return fmt::format("cannot keep extended attribute {}: {}", name, errno_text(errno));
    }
  }
  return {};
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
  std::optional<Hasher> hasher;         // for the journal
  std::optional<Hasher> expect_hasher;  // for options.expect_digest
  uint64_t bytes = 0;
  struct stat written {};  // the temp file's inode and mtime once its content is complete (journal)
  bool finished = false;

  void discard() noexcept {
    tmpfd.reset();
    if (!tmpname.empty() && dirfd) ::unlinkat(dirfd.get(), tmpname.c_str(), 0);
    tmpname.clear();
    finished = true;
  }
};

namespace {
// Removes the temp file if the scope is left by an exception before dismiss().
class DiscardUnlessDismissed {
 public:
  explicit DiscardUnlessDismissed(AtomicWriter::State& state) noexcept : state_(state) {}
  DiscardUnlessDismissed(const DiscardUnlessDismissed&) = delete;
  DiscardUnlessDismissed& operator=(const DiscardUnlessDismissed&) = delete;
  ~DiscardUnlessDismissed() {
    if (armed_) state_.discard();
  }
  void dismiss() noexcept { armed_ = false; }

 private:
  AtomicWriter::State& state_;
  bool armed_ = true;
};
}  // namespace

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

  if (options.expect_digest) s->expect_hasher.emplace(options.expect_digest->alg);

  mode_t create_mode = exists ? (existing.st_mode & 07777) : options.mode ? *options.mode : 0666;
  // An O_TMPFILE file must get a name before the rename: through /proc/self/fd, or linkat's
  // AT_EMPTY_PATH (root; unprivileged only on recent kernels). Where neither is sure (no /proc, as
  // in a minimal chroot), use a named temp file from the start rather than fail at commit.
  bool nameable = ::geteuid() == 0 || ::access("/proc/self/fd", X_OK) == 0;
  int fd = nameable ? sys::open_nothrow(s->dirfd.get(), ".", O_TMPFILE | O_WRONLY, create_mode) : -EOPNOTSUPP;
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

  if (exists) {
    std::string why = keep_owner(fd, existing);
    if (why.empty() && ::fchmod(fd, create_mode) != 0) why = fmt::format("set mode {:04o}: {}", create_mode, errno_text(errno));
    // After fchown and fchmod: an access ACL sets the group bits (the mask) itself, and chown
    // may clear security.capability.
    if (why.empty()) why = copy_xattrs(s->dir + "/" + s->base, fd);
    if (!why.empty()) {
      s->discard();
      throw Error(path, "keep the target's metadata", why + " (target untouched)", exit_code::no_perm);
    }
  } else if (options.mode) {
    // Exact, without the umask.
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
  if (s.expect_hasher) s.expect_hasher->update(chunk);
  s.bytes += chunk.size();
}

void AtomicWriter::commit() {
  State& s = *state_;
  if (s.finished) throw Error(s.requested, "commit", "writer already committed or aborted", exit_code::software);
  auto fail = [&](int err, const std::string& what) {
    s.discard();
    throw Error(err, s.requested, what + " (target untouched)");
  };
  auto refuse = [&](const std::string& why) {
    s.discard();
    throw Error(s.requested, "refusing to replace", why + " (target untouched)", exit_code::data);
  };
  if (s.options.expect_size && *s.options.expect_size != s.bytes) {
    refuse(fmt::format("got {} bytes, expected {}", s.bytes, *s.options.expect_size));
  }
  if (s.expect_hasher) {
    auto got = s.expect_hasher->finish();
    s.expect_hasher.reset();
    if (got != *s.options.expect_digest) {
      refuse(fmt::format("content digest is {}, expected {}", got.to_string(), s.options.expect_digest->to_string()));
    }
  }
  // Fenced: from the check to the rename, no other fenced writer of this path can run. The token
  // goes onto the temp file before its fsync, so it is as durable as the content it admitted.
  std::optional<durable::WriteFence> fence;
  if (s.options.fence) {
    DiscardUnlessDismissed guard(s);
    fence.emplace(durable::WriteFence::lock(s.dirfd.get(), s.dir, s.base, s.requested));
    const uint64_t highest = fence->highest();
    if (*s.options.fence < highest) {
      s.discard();
      throw Error(s.requested, "refusing to replace",
                  fmt::format("fencing token {} is lower than {}, the highest this path has accepted (target untouched)",
                              *s.options.fence, highest),
                  exit_code::fenced);
    }
    fence->accept(*s.options.fence, s.tmpfd.get(), s.options.sync);
    guard.dismiss();
  }
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
  // The journal's entry names this inode and mtime: `wait --pending` then knows the file unchanged
  // without reading it (rename keeps both; it changes only the ctime).
  if (s.hasher && ::fstat(s.tmpfd.get(), &s.written) != 0) fail(errno, "fstat temp file");
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
    try {
      journal_record(journal, PendingWrite{s.target, s.bytes, s.hasher->finish(), now_unix_ns(),
                                           static_cast<uint64_t>(s.written.st_ino), sys::mtime_ns(s.written)});
    } catch (const Error& e) {
      // The commit happened: say so, with a code no pre-commit failure uses.
      throw Error(s.requested, "replaced; not recorded in " + journal, e.what(), exit_code::temp_fail);
    }
  }
}

void AtomicWriter::abort() noexcept {
  if (state_ && !state_->finished) state_->discard();
}

uint64_t accepted_fence(const std::string& path) {
  // As a write would: the fence of the file a symlink points to.
  std::string target = path;
  if (char* real = ::realpath(path.c_str(), nullptr); real != nullptr) {
    target = real;
    ::free(real);
  }
  std::string dir = sys::dirname_of(target);
  std::string base = sys::basename_of(target);
  int dfd = sys::open_nothrow(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY);
  if (dfd < 0) throw Error(-dfd, path, "open parent directory " + dir);
  sys::UniqueFd dirfd(dfd);
  return durable::WriteFence::lock(dirfd.get(), dir, base, path).highest();
}

void atomic_write(const std::string& path, std::string_view data, const WriteOptions& options) {
  auto w = AtomicWriter::open(path, options);
  w.write(data);
  w.commit();
}

}  // namespace holdfast
