#include "lock/fence.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>

#include "common/hex.hpp"
#include "holdfast/error.hpp"
#include "holdfast/identity.hpp"
#include "sys/file.hpp"
#include "sys/fs_kind.hpp"

namespace holdfast::fence {
namespace {

constexpr size_t kEpochOffset = 0;
constexpr size_t kEpochSize = 96;
constexpr size_t kCounterOffset = 96;
constexpr size_t kCounterSize = 32;
constexpr uint64_t kCounterMax = 0xffffffffULL;

uint64_t host_hash() {
  // Only needs to tell hosts apart, not resist attack. this_host() is read once per process.
  static const uint64_t hash = std::hash<std::string>{}(this_host());
  return hash;
}

std::string padded(std::string text, size_t size) {
  text.resize(size - 1, ' ');
  text.push_back('\n');
  return text;
}

struct State {
  bool epoch_valid = false;
  uint64_t epoch = 0;
  std::string_view boot_id;  // in the caller's buffer
  uint64_t host = 0;
  bool counter_valid = false;
  uint64_t counter_epoch = 0;
  uint64_t counter = 0;
};

// Parses exactly `digits` lowercase hex digits at s[pos]; false if any is not one.
bool parse_hex(std::string_view s, size_t pos, size_t digits, uint64_t& out) {
  if (pos + digits > s.size()) return false;
  uint64_t v = 0;
  for (size_t i = pos; i < pos + digits; ++i) {
    const char c = s[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  out = v;
  return true;
}

// Eight lowercase hex digits at `p` (as format_hex8 writes them); false if any byte is not one.
// All eight at once (this runs on every grant): each byte is checked against the ranges 0-9 and
// a-f with additions that cannot carry into the next byte (bytes >= 0x80 are refused first), and
// the nibbles are gathered pairwise.
bool parse_hex8(const char* p, uint64_t& out) {
  constexpr uint64_t k01 = 0x0101010101010101ULL;
  constexpr uint64_t k80 = 0x8080808080808080ULL;
  uint64_t x = 0;
  std::memcpy(&x, p, sizeof x);
  if constexpr (std::endian::native == std::endian::little) x = __builtin_bswap64(x);  // first digit highest
  if ((x & k80) != 0) return false;
  const uint64_t digit = (x + k01 * (0x80 - '0')) & ~(x + k01 * (0x80 - '9' - 1)) & k80;
  const uint64_t letter = (x + k01 * (0x80 - 'a')) & ~(x + k01 * (0x80 - 'f' - 1)) & k80;
  if ((digit | letter) != k80) return false;
  x = (x & (k01 * 0x0f)) + (letter >> 7) * 9;  // '0' -> 0, 'a' (0x61) -> 1 + 9
  x = (x | (x >> 4)) & 0x00ff00ff00ff00ffULL;
  x = (x | (x >> 8)) & 0x0000ffff0000ffffULL;
  out = (x | (x >> 16)) & 0xffffffffULL;
  return true;
}

// `value` as exactly 8 lowercase hex digits at `out`: each nibble spread into its own byte, then
// turned into ASCII all at once.
void format_hex8(char* out, uint32_t value) {
  constexpr uint64_t k01 = 0x0101010101010101ULL;
  uint64_t x = value;
  x = (x | (x << 16)) & 0x0000ffff0000ffffULL;
  x = (x | (x << 8)) & 0x00ff00ff00ff00ffULL;
  x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0fULL;
  const uint64_t letters = ((x + k01 * 6) >> 4) & k01;  // 1 in each byte holding 10-15
  x += k01 * '0' + letters * ('a' - '0' - 10);
  if constexpr (std::endian::native == std::endian::little) x = __builtin_bswap64(x);  // first digit highest
  std::memcpy(out, &x, sizeof x);
}

// The counter line, "C <epoch:16> <counter:8>", into `s`.
void parse_counter(std::string_view bytes, State& s) {
  if (bytes.size() >= kCounterOffset + kCounterSize) {
    auto c = bytes.substr(kCounterOffset, kCounterSize);
    uint64_t epoch = 0, counter = 0;
    if (c.substr(0, 2) == "C " && c[18] == ' ' && parse_hex(c, 2, 16, epoch) && parse_hex(c, 19, 8, counter)) {
      s.counter_valid = true;
      s.counter_epoch = epoch;
      s.counter = counter;
    }
  }
}

// Parsed by position (the layout is fixed): this runs on every grant, and sscanf was most of
// its cost.
State parse(std::string_view bytes) {
  State s;
  // "E <epoch:16> <boot id> <host:16>"
  if (bytes.size() >= kEpochSize && bytes.substr(0, 2) == "E " && bytes[18] == ' ') {
    auto boot_end = bytes.find(' ', 19);
    uint64_t epoch = 0, host = 0;
    if (boot_end < kEpochSize && parse_hex(bytes, 2, 16, epoch) &&
        parse_hex(bytes, boot_end + 1, 16, host) && epoch > 0) {
      s.epoch_valid = true;
      s.epoch = epoch;
      s.boot_id = bytes.substr(19, boot_end - 19);
      s.host = host;
    }
  }
  parse_counter(bytes, s);
  return s;
}

// Writes `value` as exactly `digits` lowercase hex digits at `out`.
void format_hex(char* out, uint64_t value, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) {
    out[i] = kHex[value & 0xf];
    value >>= 4;
  }
}

// Reads the whole (128-byte) file into `buf`; returns the byte count or -errno.
ssize_t read_state(int fd, char (&buf)[kEpochSize + kCounterSize]) {
  size_t got = 0;
  while (got < sizeof buf) {
    ssize_t n = ::pread(fd, buf + got, sizeof buf - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(got);
}

// fdatasync, retrying EINTR. Returns 0 or -errno.
int datasync(int fd) {
  for (;;) {
    if (::fdatasync(fd) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

// A filesystem whose kind cannot be read is treated as a network one: syncing costs time only.
bool network_filesystem(int fd) { return sys::on_network_filesystem(fd) != 0; }

uint64_t unix_seconds() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

}  // namespace

std::string sidecar_path(const std::string& lock_path) { return lock_path + ".fence"; }

FenceFile FenceFile::open(const std::string& path, int extra_open_flags) {
  return open_with(path, [path, extra_open_flags](bool& created) {
    created = false;
    for (int round = 0;; ++round) {
      int fd = sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_NOCTTY | O_NONBLOCK | extra_open_flags);
      if (fd != -ENOENT || round == 3) return fd;
      fd = sys::open_nothrow(AT_FDCWD, path, O_RDWR | O_CREAT | O_EXCL | O_NOCTTY | extra_open_flags, 0644);
      if (fd != -EEXIST) {
        created = fd >= 0;
        return fd;
      }
    }
  });
}

FenceFile FenceFile::open_with(const std::string& path, Opener opener) {
  bool created = false;
  int fd = opener(created);
  if (fd < 0) throw Error(-fd, path, "cannot open fencing-token file");
  return adopt(path, std::move(opener), sys::UniqueFd(fd), created);
}

FenceFile FenceFile::adopt(const std::string& path, Opener opener, sys::UniqueFd fd, bool created,
                           const struct stat* known) {
  struct stat st {};
  if (known != nullptr) {
    st = *known;
  } else if (sys::fstat_nothrow(fd.get(), st) < 0) {
    st.st_mode = 0;
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(path, "cannot open fencing-token file", "not a regular file", exit_code::cant_create);
  }
  return FenceFile(path, std::move(opener), std::move(fd), created, st);
}

FenceFile::FenceFile(std::string path, Opener opener, sys::UniqueFd fd, bool created, const struct stat& opened)
    : path_(std::move(path)),
      opener_(std::move(opener)),
      fd_(std::move(fd)),
      opened_(opened),
      created_(created),
      network_(network_filesystem(fd_.get())) {
  known_size_ = opened_.st_size;
}

void FenceFile::keep_mapped() {
  want_map_ = true;
  map_if_local();
}

void FenceFile::map_if_local() {
  map_.reset();
  // On a network filesystem a mapping is not coherent with other clients: pread/pwrite there.
  if (want_map_ && !network_) map_ = sys::SharedMapping(fd_.get(), kEpochSize + kCounterSize);
}

void FenceFile::reopen() {
  bool created = false;
  int fd = opener_(created);
  if (fd < 0) throw Error(-fd, path_, "cannot reopen fencing-token file");
  sys::UniqueFd owned(fd);
  struct stat st {};
  if (sys::fstat_nothrow(fd, st) < 0 || !S_ISREG(st.st_mode)) {
    throw Error(path_, "cannot reopen fencing-token file", "not a regular file", exit_code::cant_create);
  }
  fd_ = std::move(owned);
  opened_ = st;
  known_size_ = st.st_size;
  created_ = created_ || created;
  network_ = network_filesystem(fd_.get());
  map_if_local();
}

void FenceFile::reopen_if_replaced() {
  // On a network filesystem another client's write is seen only after an open (close-to-open
  // consistency), and the name may have been replaced by another host: reopen on every grant.
  if (network_) {
    reopen();
    return;
  }
  // One stat per grant: if someone removed or replaced the file (LOCKS.md allows deleting it),
  // every other process opens the new one; we must too, or we would keep counting on an inode
  // nobody else sees, and hand out tokens below theirs.
  // The path naming our inode also proves it is still linked: one stat, against the identity
  // of the descriptor taken when it was opened.
  struct stat now;  // filled by a successful stat, read only then
  if (sys::stat_nothrow(path_, now) == 0 && sys::same_inode(opened_, now)) {
    known_size_ = now.st_size;
    return;
  }
  reopen();
}

uint64_t FenceFile::next() {
  reopen_if_replaced();
  char buf[kEpochSize + kCounterSize];
  // The stat just made says the whole layout is there: read and bump it through the mapping, in
  // place (only a holder of the lock writes it, and we hold it).
  const bool mapped = !map_.empty() && known_size_ >= static_cast<off_t>(sizeof buf);
  std::string_view bytes;
  if (mapped) {
    bytes = std::string_view(map_.data(), sizeof buf);
  } else {
    const ssize_t n = read_state(fd_.get(), buf);
    if (n < 0) throw Error(static_cast<int>(-n), path_, "cannot read fencing-token file");
    bytes = std::string_view(buf, static_cast<size_t>(n));
  }
  // The epoch line changes once per boot: when its bytes are the ones last parsed (and found
  // valid, of this boot and host), only the counter line needs parsing.
  const bool epoch_seen = epoch_cache_valid_ && bytes.size() >= kEpochSize &&
                          std::memcmp(bytes.data(), epoch_cache_, kEpochSize) == 0;
  State s;
  if (epoch_seen) {
    s.epoch_valid = true;
    s.epoch = cached_epoch_;
    uint64_t counter = 0;
    if (bytes.size() >= kCounterOffset + kCounterSize &&
        std::memcmp(bytes.data() + kCounterOffset, counter_prefix_, sizeof counter_prefix_) == 0 &&
        parse_hex8(bytes.data() + kCounterOffset + sizeof counter_prefix_, counter)) {
      s.counter_valid = true;
      s.counter_epoch = cached_epoch_;
      s.counter = counter;
    } else {
      parse_counter(bytes, s);
    }
  } else {
    s = parse(bytes);
  }
  if (!bytes.empty() && !s.epoch_valid) {
    // The durable region was written with fdatasync; if it is unreadable we cannot know which
    // tokens were issued, and guessing could hand out a smaller one. Fail closed.
    throw Error(path_, "fencing-token file is corrupt",
                "remove it only when no holder with an older token can still act", exit_code::data);
  }
  // An unreadable boot id (empty) can never prove "same boot": the counter is not durable, so
  // without that proof every grant starts a new, durably written epoch.
  const bool same_boot = epoch_seen || (s.epoch_valid && !this_boot_id().empty() && s.boot_id == this_boot_id() &&
                                         s.host == host_hash());
  if (same_boot && !epoch_seen) {
    std::memcpy(epoch_cache_, bytes.data(), kEpochSize);
    cached_epoch_ = s.epoch;
    std::memset(counter_prefix_, ' ', sizeof counter_prefix_);
    counter_prefix_[0] = 'C';
    format_hex(counter_prefix_ + 2, s.epoch, 16);
    epoch_cache_valid_ = true;
  }
  const bool counter_ok = s.counter_valid && s.counter_epoch == s.epoch && s.counter < kCounterMax;
  uint64_t epoch = s.epoch;
  uint64_t counter = 0;
  if (same_boot && counter_ok) {
    counter = s.counter + 1;
  } else {
    // New boot, another host, lost counter or exhausted counter: move to a new epoch, durably,
    // before any token of it is handed out.
    if (s.epoch >= kCounterMax) {
      // Every epoch has been used: a next one would wrap the token. Fail closed, never wrap.
      throw Error(path_, "fencing tokens exhausted", "the epoch reached 2^32", exit_code::data);
    }
    epoch = std::max(s.epoch + 1, unix_seconds());
    if (epoch > kCounterMax) epoch = s.epoch + 1;  // after 2106: keep strictly increasing
    const std::string line = "E " + hex(epoch, 16) + " " + this_boot_id() + " " + hex(host_hash(), 16);
    if (int rc = sys::pwrite_all(fd_.get(), padded(line, kEpochSize), kEpochOffset); rc < 0) {
      throw Error(-rc, path_, "cannot write fencing epoch");
    }
    if (int rc = datasync(fd_.get()); rc < 0) throw Error(-rc, path_, "cannot sync fencing epoch");
    if (created_ || bytes.empty()) {
      // The file's directory entry must survive a crash too, or the epoch would restart.
      sys::UniqueFd dir(sys::open_nothrow(AT_FDCWD, sys::dirname_of(path_), O_RDONLY | O_DIRECTORY));
      if (dir && sys::fsync_nothrow(dir.get()) < 0) throw Error(errno, sys::dirname_of(path_), "cannot sync directory");
      created_ = false;
    }
    counter = 1;
  }
  char line[kCounterSize];
  std::memset(line, ' ', sizeof line);
  if (epoch_cache_valid_ && epoch == cached_epoch_) {
    std::memcpy(line, counter_prefix_, sizeof counter_prefix_);
  } else {
    line[0] = 'C';
    format_hex(line + 2, epoch, 16);
  }
  format_hex8(line + sizeof counter_prefix_, static_cast<uint32_t>(counter));
  line[kCounterSize - 1] = '\n';
  if (mapped) {
    std::memcpy(map_.data() + kCounterOffset, line, sizeof line);
  } else if (int rc = sys::pwrite_all(fd_.get(), std::string_view(line, sizeof line), kCounterOffset); rc < 0) {
    throw Error(-rc, path_, "cannot write fencing counter");
  }
  // A server that loses this write (it crashes, or drops it on a writeback error) would roll the
  // counter back under our unchanged boot id, and the next grant would reissue this token.
  if (network_) {
    if (int rc = datasync(fd_.get()); rc < 0) throw Error(-rc, path_, "cannot sync fencing counter");
  }
  return (epoch << 32) | counter;
}

uint64_t FenceFile::current() {
  reopen_if_replaced();
  char buf[kEpochSize + kCounterSize];
  ssize_t n = static_cast<ssize_t>(sizeof buf);
  if (!map_.empty() && known_size_ >= static_cast<off_t>(sizeof buf)) {
    std::memcpy(buf, map_.data(), sizeof buf);
  } else {
    n = read_state(fd_.get(), buf);
  }
  if (n < 0) return 0;
  State s = parse(std::string_view(buf, static_cast<size_t>(n)));
  if (!s.epoch_valid || !s.counter_valid || s.counter_epoch != s.epoch) return 0;
  return (s.epoch << 32) | s.counter;
}

}  // namespace holdfast::fence
