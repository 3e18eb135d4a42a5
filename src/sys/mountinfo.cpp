#include "sys/mountinfo.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <memory>

#include "common/lines.hpp"
#include "sys/file.hpp"

namespace holdfast::sys {

namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

template <typename Unsigned>
bool parse_unsigned(std::string_view s, Unsigned& out) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && ptr == end;
}

// The next whitespace-separated field of `line` from `pos` (as `>>` would read it); empty at
// the end.
std::string_view next_field(std::string_view line, size_t& pos) {
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; };
  while (pos < line.size() && blank(line[pos])) ++pos;
  const size_t start = pos;
  while (pos < line.size() && !blank(line[pos])) ++pos;
  return line.substr(start, pos - start);
}

}  // namespace

// Split by hand, not with istringstream: every `holdfast lock` with the `auto` backend parses
// this table once, and the stream version was a third of the command's instructions.
std::vector<MountEntry> parse_mountinfo(std::string_view text) {
  std::vector<MountEntry> out;
  size_t line_start = 0;
  while (const auto next = next_line(text, line_start)) {
    const std::string_view line = *next;
    size_t pos = 0;
    MountEntry m;
    const std::string_view id = next_field(line, pos);
    const std::string_view parent = next_field(line, pos);
    const std::string_view majmin = next_field(line, pos);
    const std::string_view root = next_field(line, pos);
    const std::string_view mount_point = next_field(line, pos);
    const std::string_view options = next_field(line, pos);
    if (options.empty() || parent.empty() || !parse_unsigned(id, m.id)) continue;
    std::string_view field;
    do {
      field = next_field(line, pos);
    } while (!field.empty() && field != "-");
    m.fstype = std::string(next_field(line, pos));
    m.source = unescape(std::string(next_field(line, pos)));
    m.super_options = std::string(next_field(line, pos));
    auto colon = majmin.find(':');
    if (colon == std::string_view::npos || !parse_unsigned(majmin.substr(0, colon), m.major) ||
        !parse_unsigned(majmin.substr(colon + 1), m.minor))
      continue;
    m.root = unescape(std::string(root));
    m.mount_point = unescape(std::string(mount_point));
    m.mount_options = std::string(options);
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<MountEntry> read_mountinfo(const std::string& path) {
  auto text = read_file(path, size_t{16} << 20U);
  if (!text) return {};
  return parse_mountinfo(*text);
}

namespace {

// <linux/mount.h> of Linux 6.18 (this build's headers may predate statmount): the request, and
// the fixed part of the reply up to the fields read here. String fields are offsets into `str`.
constexpr long kStatmountSyscall = 457;  // __NR_statmount, the same number on every architecture
constexpr uint64_t kSbBasic = 0x1, kMntBasic = 0x2, kFsType = 0x20, kMntOpts = 0x80, kFsSubtype = 0x100,
                   kSbSource = 0x200;
constexpr uint32_t kRequestSizeVer0 = 24;

struct MountIdRequest {
  uint32_t size;
  uint32_t spare;
  uint64_t mnt_id;
  uint64_t param;
};

struct StatmountReply {
  uint32_t size, mnt_opts;
  uint64_t mask;
  uint32_t sb_dev_major, sb_dev_minor;
  uint64_t sb_magic;
  uint32_t sb_flags, fs_type;
  uint64_t mnt_id, mnt_parent_id;
  uint32_t mnt_id_old, mnt_parent_id_old;
  uint64_t mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
  uint32_t mnt_root, mnt_point;
  uint64_t mnt_ns_id;
  uint32_t fs_subtype, sb_source;
  uint32_t opt_num, opt_array, opt_sec_num, opt_sec_array;
  uint64_t supported_mask;
  uint32_t mnt_uidmap_num, mnt_uidmap, mnt_gidmap_num, mnt_gidmap;
  uint64_t spare2[43];
  // char str[]: the strings follow
};
static_assert(sizeof(StatmountReply) == 512, "struct statmount's fixed part is 512 bytes");

}  // namespace

std::optional<MountFacts> stat_mount(uint64_t unique_id) {
  const uint64_t wanted = kSbBasic | kMntBasic | kFsType | kMntOpts | kFsSubtype | kSbSource;
  MountIdRequest req{kRequestSizeVer0, 0, unique_id, wanted};
  // Strings are short (an NFS mount's options are the longest seen): 4 KiB first, larger on EOVERFLOW.
  for (size_t size = 4096; size <= (size_t{1} << 20); size *= 4) {
    auto buf = std::make_unique<uint64_t[]>(size / sizeof(uint64_t));
    if (::syscall(kStatmountSyscall, &req, buf.get(), size, 0) != 0) {
      if (errno == EOVERFLOW) continue;
      return std::nullopt;  // ENOSYS (before 6.8), EINVAL (a field this kernel lacks), EPERM, ENOENT
    }
    const auto* reply = reinterpret_cast<const StatmountReply*>(buf.get());
    const uint64_t required = kSbBasic | kMntBasic | kFsType | kSbSource;
    if ((reply->mask & required) != required || reply->mnt_id != unique_id || reply->size > size ||
        reply->size < sizeof(StatmountReply)) {
      return std::nullopt;
    }
    const char* str = reinterpret_cast<const char*>(buf.get()) + sizeof(StatmountReply);
    const size_t str_size = reply->size - sizeof(StatmountReply);
    // A string field the kernel set (its bit in mask) names a NUL-terminated string inside str.
    auto field = [&](uint64_t bit, uint32_t offset) -> std::optional<std::string> {
      if ((reply->mask & bit) == 0) return std::string();  // nothing to report (no subtype, no options)
      if (offset >= str_size) return std::nullopt;
      const char* begin = str + offset;
      const void* end = std::memchr(begin, '\0', str_size - offset);
      if (end == nullptr) return std::nullopt;
      return std::string(begin, static_cast<const char*>(end));
    };
    auto type = field(kFsType, reply->fs_type);
    auto subtype = field(kFsSubtype, reply->fs_subtype);
    auto source = field(kSbSource, reply->sb_source);
    auto options = field(kMntOpts, reply->mnt_opts);
    if (!type || !subtype || !source || !options) return std::nullopt;
    MountFacts m;
    m.unique_id = reply->mnt_id;
    m.major = reply->sb_dev_major;
    m.minor = reply->sb_dev_minor;
    m.attributes = reply->mnt_attr;
    m.sb_flags = reply->sb_flags;
    m.fstype = subtype->empty() ? *type : *type + "." + *subtype;
    m.source = std::move(*source);
    m.super_options = std::move(*options);
    return m;
  }
  return std::nullopt;
}

}  // namespace holdfast::sys
