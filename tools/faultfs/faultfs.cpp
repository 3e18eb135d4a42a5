// faultfs: a FUSE passthrough to a backing directory that lies in the ways real filesystems do.
//
//   faultfs BACKING MOUNTPOINT [-f] [-o OPTION[,OPTION...]]
//
// Faults (mount options; all but nolocks can be changed at run time through /.faultfs-control):
//   nonatomic_create[=DELAY_US]  mkdir, O_CREAT|O_EXCL and rename(RENAME_NOREPLACE) become
//                                check-then-act: the existence check sees the directory as it was
//                                DELAY_US (default 2000) ago, then the create is done non-exclusively
//                                after a DELAY_US pause. Concurrent creators can all "win", as on
//                                WSL2 drvfs. link(2) stays atomic.
//   nolocks                      flock and fcntl (POSIX and OFD) locks are accepted but never enforced,
//                                as on `nolock` NFS and 9p. Mount-time only: the kernel decides at
//                                FUSE INIT whether it emulates locks locally (then they work).
//   delay_data=MS                written bytes are held in memory; the file's size changes at once
//                                but reads return the old bytes (zeros past the old end) until MS ms
//                                after the writer closes the file, or until it fsyncs. The vfat/USB
//                                case: the directory entry lands before the data sectors.
//   fail_write=N:ERRNO[+]        the Nth write call (counted from mount or the last control write)
//                                fails with EIO or ENOSPC (or EDQUOT/EROFS/EFBIG); with a trailing
//                                '+', every write from the Nth on fails.
//   fsync_lies                   fsync returns success without syncing (and without landing
//                                delayed data).
//
// Control file: write "option=value" lines to MOUNT/.faultfs-control (values: a number, on/off, or
// N:ERRNO for fail_write); read it to see the current settings and counters.
//
// Kernel caching is off (attr/entry/negative timeouts 0, direct_io, no kernel_cache), so every
// reader sees faultfs's view. Multithreaded, so racers really interleave.
#define FUSE_USE_VERSION 35

#include <dirent.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kControlPath = "/.faultfs-control";

// ---- fault settings, shared by all FUSE worker threads ----

struct Settings {
  bool nonatomic = false;
  uint32_t nonatomic_delay_us = 2000;
  bool nolocks = false;  // fixed at mount
  uint32_t delay_data_ms = 0;
  uint64_t fail_write_n = 0;  // 0: off
  int fail_write_errno = 0;
  bool fail_write_sticky = false;
  bool fsync_lies = false;
};

std::mutex g_settings_mutex;
Settings g_settings;
std::atomic<uint64_t> g_write_count{0};
int g_backing = -1;  // O_PATH-less directory fd of BACKING

Settings settings() {
  std::lock_guard lock(g_settings_mutex);
  return g_settings;
}

std::string rel(const char* path) {
  if (path[0] == '/' && path[1] == '\0') return ".";
  return path[0] == '/' ? std::string(path + 1) : std::string(path);
}

pid_t caller_tid() { return fuse_get_context()->pid; }

// ---- nonatomic_create: a stale view of recent creations ----
// An entry created through a non-atomic create stays invisible to every other caller's lookups
// for DELAY_US: their existence check is that old. The kernel serialises creates in one directory
// under the directory's inode lock, so a merely slow create would still be atomic; hiding the
// entry from the next creator's lookup is what lets it create "again" and also succeed.

struct Hidden {
  Clock::time_point until;
  std::vector<pid_t> creators;  // callers who believe they created it; they see it
};
std::mutex g_hidden_mutex;
std::unordered_map<std::string, Hidden> g_hidden;

bool hidden_from(const std::string& path, pid_t tid) {
  std::lock_guard lock(g_hidden_mutex);
  auto it = g_hidden.find(path);
  if (it == g_hidden.end()) return false;
  if (Clock::now() >= it->second.until) {
    g_hidden.erase(it);
    return false;
  }
  const auto& c = it->second.creators;
  return std::find(c.begin(), c.end(), tid) == c.end();
}

void mark_created(const std::string& path, pid_t tid, uint32_t delay_us) {
  std::lock_guard lock(g_hidden_mutex);
  auto now = Clock::now();
  if (g_hidden.size() > 4096) {
    std::erase_if(g_hidden, [&](const auto& kv) { return now >= kv.second.until; });
  }
  auto& h = g_hidden[path];
  if (h.until < now) h.creators.clear();
  h.until = now + std::chrono::microseconds(delay_us);
  h.creators.push_back(tid);
}

void forget_hidden(const std::string& path) {
  std::lock_guard lock(g_hidden_mutex);
  g_hidden.erase(path);
}

// Existence as the stale check sees it.
bool visible_exists(const char* path, pid_t tid) {
  struct stat st{};
  if (::fstatat(g_backing, rel(path).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return false;
  return !hidden_from(path, tid);
}

void pause_us(uint32_t us) { std::this_thread::sleep_for(std::chrono::microseconds(us)); }

// ---- delay_data: bytes written but not yet landed on the backing file ----

struct Extent {
  off_t offset;
  std::string data;
  std::optional<Clock::time_point> land_at;  // unset until the writer closes or fsyncs
};
struct PendingFile {
  int fd = -1;  // dup of a writable descriptor, for landing after the writer closed
  std::vector<Extent> extents;
};
std::mutex g_pending_mutex;
std::condition_variable g_pending_cv;
std::map<ino_t, PendingFile> g_pending;
bool g_stopping = false;

// Lands extents of `file` due by `now` (all if `all`); caller holds g_pending_mutex.
void land_locked(PendingFile& file, Clock::time_point now, bool all) {
  auto& ex = file.extents;
  // Land in write order, stopping at the first not yet due so later writes never land first.
  size_t n = 0;
  for (; n < ex.size(); ++n) {
    if (!all && (!ex[n].land_at || *ex[n].land_at > now)) break;
    (void)::pwrite(file.fd, ex[n].data.data(), ex[n].data.size(), ex[n].offset);
  }
  ex.erase(ex.begin(), ex.begin() + static_cast<std::ptrdiff_t>(n));
}

void land_due(ino_t ino, bool all) {
  std::lock_guard lock(g_pending_mutex);
  auto it = g_pending.find(ino);
  if (it == g_pending.end()) return;
  land_locked(it->second, Clock::now(), all);
  if (it->second.extents.empty()) {
    ::close(it->second.fd);
    g_pending.erase(it);
  }
}

void lander_thread() {
  std::unique_lock lock(g_pending_mutex);
  while (!g_stopping) {
    auto now = Clock::now();
    std::optional<Clock::time_point> next;
    for (auto it = g_pending.begin(); it != g_pending.end();) {
      land_locked(it->second, now, false);
      if (it->second.extents.empty()) {
        ::close(it->second.fd);
        it = g_pending.erase(it);
        continue;
      }
      const auto& first = it->second.extents.front();
      if (first.land_at && (!next || *first.land_at < *next)) next = first.land_at;
      ++it;
    }
    if (next) {
      g_pending_cv.wait_until(lock, *next);
    } else {
      g_pending_cv.wait_for(lock, std::chrono::milliseconds(200));
    }
  }
  for (auto& [ino, file] : g_pending) {  // orderly unmount flushes, like a clean eject
    land_locked(file, Clock::now(), true);
    ::close(file.fd);
  }
  g_pending.clear();
}

// Clips pending extents of `ino` at `size` (truncate and O_TRUNC).
void clip_pending(ino_t ino, off_t size) {
  std::lock_guard lock(g_pending_mutex);
  auto it = g_pending.find(ino);
  if (it == g_pending.end()) return;
  auto& ex = it->second.extents;
  for (auto& e : ex) {
    if (e.offset >= size) {
      e.data.clear();
    } else if (e.offset + static_cast<off_t>(e.data.size()) > size) {
      e.data.resize(static_cast<size_t>(size - e.offset));
    }
  }
  std::erase_if(ex, [](const Extent& e) { return e.data.empty(); });
}

void schedule_landing(ino_t ino, uint32_t delay_ms) {
  std::lock_guard lock(g_pending_mutex);
  auto it = g_pending.find(ino);
  if (it == g_pending.end()) return;
  auto at = Clock::now() + std::chrono::milliseconds(delay_ms);
  for (auto& e : it->second.extents) {
    if (!e.land_at) e.land_at = at;
  }
  g_pending_cv.notify_all();
}

size_t pending_extent_count() {
  std::lock_guard lock(g_pending_mutex);
  size_t n = 0;
  for (const auto& kv : g_pending) n += kv.second.extents.size();
  return n;
}

// ---- open files ----

struct Handle {
  int fd = -1;
  ino_t ino = 0;
  bool control = false;
  bool wrote = false;
};

Handle* handle(const fuse_file_info* fi) { return reinterpret_cast<Handle*>(fi->fh); }

uint64_t to_fh(Handle* h) { return reinterpret_cast<uint64_t>(h); }

// ---- control file ----

const char* errno_name(int e) {
  switch (e) {
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EROFS: return "EROFS";
    case EFBIG: return "EFBIG";
    default: return "?";
  }
}

int errno_from_name(const std::string& s) {
  if (s == "EIO") return EIO;
  if (s == "ENOSPC") return ENOSPC;
  if (s == "EDQUOT") return EDQUOT;
  if (s == "EROFS") return EROFS;
  if (s == "EFBIG") return EFBIG;
  return 0;
}

std::string control_text() {
  Settings s = settings();
  std::string out;
  out += "nonatomic_create=" + (s.nonatomic ? std::to_string(s.nonatomic_delay_us) : "off") + "\n";
  out += std::string("nolocks=") + (s.nolocks ? "on" : "off") + "\n";
  out += "delay_data=" + std::to_string(s.delay_data_ms) + "\n";
  out += "fail_write=" +
         (s.fail_write_n ? std::to_string(s.fail_write_n) + ":" + errno_name(s.fail_write_errno) +
                               (s.fail_write_sticky ? "+" : "")
                         : std::string("off")) +
         "\n";
  out += std::string("fsync_lies=") + (s.fsync_lies ? "on" : "off") + "\n";
  out += "writes=" + std::to_string(g_write_count.load()) + "\n";
  out += "pending_extents=" + std::to_string(pending_extent_count()) + "\n";
  return out;
}

std::optional<bool> parse_bool(const std::string& v) {
  if (v.empty() || v == "on" || v == "1" || v == "true") return true;
  if (v == "off" || v == "0" || v == "false") return false;
  return std::nullopt;
}

std::optional<uint64_t> parse_uint(const std::string& v) {
  if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::strtoull(v.c_str(), nullptr, 10);
}

// Applies one "option[=value]" setting to `s`. `at_mount` allows nolocks. False if invalid.
bool apply_setting(Settings& s, const std::string& line, bool at_mount) {
  auto eq = line.find('=');
  std::string key = line.substr(0, eq);
  std::string value = eq == std::string::npos ? "" : line.substr(eq + 1);
  if (key == "nonatomic_create") {
    if (auto b = parse_bool(value); b && !value.empty() && value != "1") {
      s.nonatomic = *b;
      return true;
    }
    if (value.empty()) {
      s.nonatomic = true;
      return true;
    }
    auto us = parse_uint(value);
    if (!us || *us > 10'000'000) return false;
    s.nonatomic = *us > 0;
    if (*us > 0) s.nonatomic_delay_us = static_cast<uint32_t>(*us);
    return true;
  }
  if (key == "nolocks") {
    auto b = parse_bool(value);
    return at_mount && b && (s.nolocks = *b, true);
  }
  if (key == "delay_data") {
    if (value == "off") value = "0";
    auto ms = parse_uint(value);
    if (!ms || *ms > 3'600'000) return false;
    s.delay_data_ms = static_cast<uint32_t>(*ms);
    return true;
  }
  if (key == "fail_write") {
    if (value == "off" || value == "0") {
      s.fail_write_n = 0;
      return true;
    }
    auto colon = value.find(':');
    if (colon == std::string::npos) return false;
    auto n = parse_uint(value.substr(0, colon));
    std::string err = value.substr(colon + 1);
    bool sticky = !err.empty() && err.back() == '+';
    if (sticky) err.pop_back();
    int e = errno_from_name(err);
    if (!n || *n == 0 || e == 0) return false;
    s.fail_write_n = *n;
    s.fail_write_errno = e;
    s.fail_write_sticky = sticky;
    return true;
  }
  if (key == "fsync_lies") {
    auto b = parse_bool(value);
    return b && (s.fsync_lies = *b, true);
  }
  return false;
}

int control_write(const char* buf, size_t size) {
  std::string text(buf, size);
  Settings s = settings();
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
    if (!line.empty() && line[0] != '#' && !apply_setting(s, line, false)) return -EINVAL;
    start = end + 1;
  }
  {
    std::lock_guard lock(g_settings_mutex);
    g_settings = s;
  }
  g_write_count = 0;  // fail_write counts from the last control write
  return static_cast<int>(size);
}

// ---- FUSE operations ----

std::thread g_lander;

void* op_init(fuse_conn_info*, fuse_config* cfg) {
  // Started here, not in main: fuse_main forks into the background (without -f) before init.
  if (!g_lander.joinable()) g_lander = std::thread(lander_thread);
  cfg->use_ino = 1;
  cfg->attr_timeout = 0;
  cfg->entry_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->direct_io = 1;
  cfg->kernel_cache = 0;
  // Unlinking an open file must really unlink it (no .fuse_hidden rename): dotlocks count links.
  cfg->hard_remove = 1;
  return nullptr;
}

void op_destroy(void*) {
  {
    std::lock_guard lock(g_pending_mutex);
    g_stopping = true;
  }
  g_pending_cv.notify_all();
}

int op_getattr(const char* path, struct stat* st, fuse_file_info* fi) {
  if (std::strcmp(path, kControlPath) == 0) {
    std::memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(control_text().size());
    st->st_uid = ::getuid();
    st->st_gid = ::getgid();
    return 0;
  }
  if (fi != nullptr && !handle(fi)->control) {
    return ::fstat(handle(fi)->fd, st) == 0 ? 0 : -errno;
  }
  if (settings().nonatomic && hidden_from(path, caller_tid())) return -ENOENT;
  return ::fstatat(g_backing, rel(path).c_str(), st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

int op_readlink(const char* path, char* buf, size_t size) {
  ssize_t n = ::readlinkat(g_backing, rel(path).c_str(), buf, size - 1);
  if (n < 0) return -errno;
  buf[n] = '\0';
  return 0;
}

int op_mkdir(const char* path, mode_t mode) {
  Settings s = settings();
  if (!s.nonatomic) return ::mkdirat(g_backing, rel(path).c_str(), mode) == 0 ? 0 : -errno;
  pid_t tid = caller_tid();
  if (visible_exists(path, tid)) return -EEXIST;
  pause_us(s.nonatomic_delay_us);
  if (::mkdirat(g_backing, rel(path).c_str(), mode) != 0 && errno != EEXIST) return -errno;
  mark_created(path, tid, s.nonatomic_delay_us);
  return 0;
}

int op_unlink(const char* path) {
  if (::unlinkat(g_backing, rel(path).c_str(), 0) != 0) return -errno;
  forget_hidden(path);
  return 0;
}

int op_rmdir(const char* path) {
  if (::unlinkat(g_backing, rel(path).c_str(), AT_REMOVEDIR) != 0) return -errno;
  forget_hidden(path);
  return 0;
}

int op_symlink(const char* target, const char* path) {
  return ::symlinkat(target, g_backing, rel(path).c_str()) == 0 ? 0 : -errno;
}

int op_rename(const char* from, const char* to, unsigned int flags) {
  Settings s = settings();
  if (s.nonatomic && (flags & RENAME_NOREPLACE) != 0) {
    pid_t tid = caller_tid();
    if (visible_exists(to, tid)) return -EEXIST;
    pause_us(s.nonatomic_delay_us);
    if (::renameat(g_backing, rel(from).c_str(), g_backing, rel(to).c_str()) != 0) return -errno;
    mark_created(to, tid, s.nonatomic_delay_us);
    return 0;
  }
  if (::renameat2(g_backing, rel(from).c_str(), g_backing, rel(to).c_str(), flags) != 0) {
    return -errno;
  }
  forget_hidden(to);
  return 0;
}

int op_link(const char* from, const char* to) {
  return ::linkat(g_backing, rel(from).c_str(), g_backing, rel(to).c_str(), 0) == 0 ? 0 : -errno;
}

int op_chmod(const char* path, mode_t mode, fuse_file_info* fi) {
  if (fi != nullptr && !handle(fi)->control) return ::fchmod(handle(fi)->fd, mode) == 0 ? 0 : -errno;
  return ::fchmodat(g_backing, rel(path).c_str(), mode, 0) == 0 ? 0 : -errno;
}

int op_chown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  if (fi != nullptr && !handle(fi)->control) {
    return ::fchown(handle(fi)->fd, uid, gid) == 0 ? 0 : -errno;
  }
  return ::fchownat(g_backing, rel(path).c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

int op_truncate(const char* path, off_t size, fuse_file_info* fi) {
  if (std::strcmp(path, kControlPath) == 0) return 0;  // `echo x > control` truncates first
  int fd = -1;
  bool own = false;
  if (fi != nullptr) {
    fd = handle(fi)->fd;
  } else {
    fd = ::openat(g_backing, rel(path).c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    own = true;
  }
  struct stat st{};
  int rc = ::fstat(fd, &st) == 0 && ::ftruncate(fd, size) == 0 ? 0 : -errno;
  if (rc == 0) clip_pending(st.st_ino, size);
  if (own) ::close(fd);
  return rc;
}

int op_utimens(const char* path, const struct timespec tv[2], fuse_file_info* fi) {
  if (fi != nullptr && !handle(fi)->control) {
    return ::futimens(handle(fi)->fd, tv) == 0 ? 0 : -errno;
  }
  if (std::strcmp(path, kControlPath) == 0) return 0;
  return ::utimensat(g_backing, rel(path).c_str(), tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

int finish_open(int fd, fuse_file_info* fi) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  auto* h = new Handle{fd, st.st_ino, false, false};
  fi->fh = to_fh(h);
  fi->direct_io = 1;
  fi->keep_cache = 0;
  return 0;
}

int op_open(const char* path, fuse_file_info* fi) {
  if (std::strcmp(path, kControlPath) == 0) {
    fi->fh = to_fh(new Handle{-1, 0, true, false});
    fi->direct_io = 1;
    return 0;
  }
  int fd = ::openat(g_backing, rel(path).c_str(), (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);
  if (fd < 0) return -errno;
  return finish_open(fd, fi);
}

int op_create(const char* path, mode_t mode, fuse_file_info* fi) {
  if (std::strcmp(path, kControlPath) == 0) return -EEXIST;
  Settings s = settings();
  int flags = fi->flags | O_CREAT | O_CLOEXEC;
  if (s.nonatomic && (flags & O_EXCL) != 0) {
    pid_t tid = caller_tid();
    if (visible_exists(path, tid)) return -EEXIST;
    pause_us(s.nonatomic_delay_us);
    int fd = ::openat(g_backing, rel(path).c_str(), flags & ~O_EXCL, mode);
    if (fd < 0) return -errno;
    mark_created(path, tid, s.nonatomic_delay_us);
    return finish_open(fd, fi);
  }
  int fd = ::openat(g_backing, rel(path).c_str(), flags, mode);
  if (fd < 0) return -errno;
  return finish_open(fd, fi);
}

int op_read(const char*, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Handle* h = handle(fi);
  if (h->control) {
    std::string text = control_text();
    if (off >= static_cast<off_t>(text.size())) return 0;
    size_t n = std::min(size, text.size() - static_cast<size_t>(off));
    std::memcpy(buf, text.data() + off, n);
    return static_cast<int>(n);
  }
  land_due(h->ino, false);  // exact timing, not lander-thread granularity
  ssize_t n = ::pread(h->fd, buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int op_write(const char*, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  Handle* h = handle(fi);
  if (h->control) return control_write(buf, size);
  Settings s = settings();
  uint64_t n = ++g_write_count;
  if (s.fail_write_n != 0 && (n == s.fail_write_n || (s.fail_write_sticky && n > s.fail_write_n))) {
    return -s.fail_write_errno;
  }
  h->wrote = true;
  if (s.delay_data_ms == 0) {
    ssize_t w = ::pwrite(h->fd, buf, size, off);
    return w < 0 ? -errno : static_cast<int>(w);
  }
  // Delayed: the size grows now (the directory entry lands), the bytes later.
  struct stat st{};
  if (::fstat(h->fd, &st) != 0) return -errno;
  off_t end = off + static_cast<off_t>(size);
  if (end > st.st_size && ::ftruncate(h->fd, end) != 0) return -errno;
  std::lock_guard lock(g_pending_mutex);
  auto& file = g_pending[h->ino];
  if (file.fd < 0) {
    file.fd = ::fcntl(h->fd, F_DUPFD_CLOEXEC, 0);
    if (file.fd < 0) return -errno;
  }
  file.extents.push_back(Extent{off, std::string(buf, size), std::nullopt});
  return static_cast<int>(size);
}

int op_statfs(const char*, struct statvfs* st) {
  return ::fstatvfs(g_backing, st) == 0 ? 0 : -errno;
}

int op_release(const char*, fuse_file_info* fi) {
  Handle* h = handle(fi);
  if (!h->control) {
    if (h->wrote) {
      Settings s = settings();
      schedule_landing(h->ino, s.delay_data_ms);
    }
    ::close(h->fd);
  }
  delete h;
  return 0;
}

int op_fsync(const char*, int datasync, fuse_file_info* fi) {
  Handle* h = handle(fi);
  if (h->control) return 0;
  if (settings().fsync_lies) return 0;
  land_due(h->ino, true);
  int rc = datasync ? ::fdatasync(h->fd) : ::fsync(h->fd);
  return rc == 0 ? 0 : -errno;
}

int op_opendir(const char* path, fuse_file_info* fi) {
  int fd = ::openat(g_backing, rel(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  fi->fh = reinterpret_cast<uint64_t>(d);
  return 0;
}

int op_readdir(const char*, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info* fi,
               fuse_readdir_flags) {
  DIR* d = reinterpret_cast<DIR*>(fi->fh);
  ::rewinddir(d);
  while (dirent* e = ::readdir(d)) {
    struct stat st{};
    st.st_ino = e->d_ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(e->d_type));
    if (fill(buf, e->d_name, &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
  }
  return 0;
}

int op_releasedir(const char*, fuse_file_info* fi) {
  ::closedir(reinterpret_cast<DIR*>(fi->fh));
  return 0;
}

int op_access(const char* path, int mask) {
  if (std::strcmp(path, kControlPath) == 0) return 0;
  return ::faccessat(g_backing, rel(path).c_str(), mask, 0) == 0 ? 0 : -errno;
}

int op_fallocate(const char*, int mode, off_t off, off_t len, fuse_file_info* fi) {
  if (handle(fi)->control) return -EOPNOTSUPP;
  return ::fallocate(handle(fi)->fd, mode, off, len) == 0 ? 0 : -errno;
}

// nolocks: every lock request "succeeds" and nothing is recorded, so nothing excludes. Having
// these operations at all tells the kernel not to emulate locks locally.
int op_lock(const char*, fuse_file_info*, int cmd, struct flock* lock) {
  if (cmd == F_GETLK) lock->l_type = F_UNLCK;
  return 0;
}

int op_flock(const char*, fuse_file_info*, int) { return 0; }

// ---- mount options ----

struct ParseState {
  bool bad = false;
  std::string bad_option;
};

int opt_proc(void* data, const char* arg, int key, fuse_args*) {
  auto* state = static_cast<ParseState*>(data);
  if (key != FUSE_OPT_KEY_OPT) return 1;
  std::string a(arg);
  std::string name = a.substr(0, a.find('='));
  if (name == "nonatomic_create" || name == "nolocks" || name == "delay_data" ||
      name == "fail_write" || name == "fsync_lies") {
    if (!apply_setting(g_settings, a, true)) {
      state->bad = true;
      state->bad_option = a;
    }
    return 0;  // consumed: not for libfuse
  }
  return 1;
}

void usage(const char* prog) {
  std::fprintf(stderr,
               "usage: %s BACKING MOUNTPOINT [-f] [-o OPTIONS]\n"
               "fault options: nonatomic_create[=DELAY_US] nolocks delay_data=MS\n"
               "               fail_write=N:EIO|ENOSPC[+] fsync_lies\n"
               "run-time control: write option=value lines to MOUNTPOINT/.faultfs-control\n",
               prog);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argv[1][0] == '-') {
    usage(argv[0]);
    return 64;
  }
  char* backing = ::realpath(argv[1], nullptr);
  if (backing == nullptr) {
    std::fprintf(stderr, "faultfs: %s: %s\n", argv[1], std::strerror(errno));
    return 66;
  }
  g_backing = ::open(backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (g_backing < 0) {
    std::fprintf(stderr, "faultfs: %s: %s\n", backing, std::strerror(errno));
    return 66;
  }
  std::free(backing);

  // libfuse sees: prog MOUNTPOINT [rest...]
  std::vector<char*> args{argv[0]};
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  fuse_args fargs = FUSE_ARGS_INIT(static_cast<int>(args.size()), args.data());
  ParseState state;
  if (fuse_opt_parse(&fargs, &state, nullptr, opt_proc) != 0) return 64;
  if (state.bad) {
    std::fprintf(stderr, "faultfs: bad option: %s\n", state.bad_option.c_str());
    usage(argv[0]);
    return 64;
  }
  fuse_opt_add_arg(&fargs, "-ofsname=faultfs,subtype=faultfs,max_threads=64");

  fuse_operations ops{};
  ops.init = op_init;
  ops.destroy = op_destroy;
  ops.getattr = op_getattr;
  ops.readlink = op_readlink;
  ops.mkdir = op_mkdir;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.symlink = op_symlink;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.chmod = op_chmod;
  ops.chown = op_chown;
  ops.truncate = op_truncate;
  ops.utimens = op_utimens;
  ops.open = op_open;
  ops.create = op_create;
  ops.read = op_read;
  ops.write = op_write;
  ops.statfs = op_statfs;
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.releasedir = op_releasedir;
  ops.access = op_access;
  ops.fallocate = op_fallocate;
  if (g_settings.nolocks) {
    ops.lock = op_lock;
    ops.flock = op_flock;
  }

  int rc = fuse_main(fargs.argc, fargs.argv, &ops, nullptr);
  op_destroy(nullptr);  // in case fuse_main failed before init
  if (g_lander.joinable()) g_lander.join();
  fuse_opt_free_args(&fargs);
  return rc;
}
