// The cross-process verdict store: what was measured about one mount (the quick kernel-lock check
// and holdfast probe's per-primitive verdicts), so `auto` decides once per mount, not per process.
//
// Trust: a verdict decides which lock backend runs, so a forged "locks are enforced" would turn
// `auto` into a double grant. A stored file is believed only if it, and the directory holding it,
// are owned by this process's effective uid or by root and are writable by nobody else; files
// are opened with O_NOFOLLOW and checked through the descriptor (fstat), never by path. Another
// user can therefore at worst make us re-test (deny the cache), never make us believe them.
//
// Where: $HOLDFAST_VERDICT_DIR if set, else /run/holdfast/verdicts for root (0755, so every user
// may read root's measurements), else $XDG_RUNTIME_DIR/holdfast/verdicts, else
// /tmp/holdfast-UID/verdicts (0700). Readers consult their own directory, then root's. The key
// (probe_internal::mount_key) names the boot and the mount's never-reused id, so entries of
// unmounted filesystems are simply never looked up again; the directories live on tmpfs and vanish
// at reboot.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "common/hex.hpp"
#include "common/lines.hpp"
#include "probe/internal.hpp"
#include "sys/fd.hpp"
#include "sys/file.hpp"

namespace holdfast::probe_internal {

namespace {

constexpr const char* kRootDir = "/run/holdfast/verdicts";
constexpr const char* kMagic = "holdfast-verdicts 1";

bool trusted(const struct stat& st) {
  const uid_t me = ::geteuid();
  return (st.st_uid == me || st.st_uid == 0) && (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

// Opens `dir` as a trusted directory, or returns an empty fd.
sys::UniqueFd open_trusted_dir(const std::string& dir) {
  sys::UniqueFd fd(sys::open_nothrow(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
  struct stat st{};
  if (!fd || sys::fstat_nothrow(fd.get(), st) != 0 || !S_ISDIR(st.st_mode) || !trusted(st)) return {};
  return fd;
}

std::string own_dir() {
  if (const char* env = std::getenv("HOLDFAST_VERDICT_DIR"); env != nullptr && env[0] == '/') return env;
  const uid_t me = ::geteuid();
  if (me == 0) return kRootDir;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && xdg[0] == '/') {
    return std::string(xdg) + "/holdfast/verdicts";
  }
  return "/tmp/holdfast-" + std::to_string(me) + "/verdicts";
}

// Creates the missing components of `dir` (0755 for root's shared store, else 0700). Existing
// components are left alone: the trust check on the final directory decides.
void make_dirs(const std::string& dir) {
  const mode_t mode = ::geteuid() == 0 ? 0755 : 0700;
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = dir.find('/', pos + 1);
    ::mkdir(dir.substr(0, pos).c_str(), mode);
  }
}

std::string file_name(const std::string& key) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a: a name, not a security boundary (the key is checked)
  for (char c : key) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return hex(h, 16);
}

// Split by next_line, not with std::istringstream: every `holdfast lock` with the `auto` backend
// reads this file.
std::optional<StoredVerdicts> parse(std::string_view text, const std::string& key) {
  size_t pos = 0;
  auto line = next_line(text, pos);
  if (!line || *line != kMagic) return std::nullopt;
  line = next_line(text, pos);
  if (!line || line->substr(0, 4) != "key " || line->substr(4) != key) return std::nullopt;
  StoredVerdicts v;
  while ((line = next_line(text, pos))) {
    const auto sp = line->find(' ');
    if (sp == std::string_view::npos) continue;
    const std::string_view name = line->substr(0, sp);
    const std::string_view value = line->substr(sp + 1);
    if (name == "ofd_excludes") v.ofd_excludes = value == "1";
    else if (name == "flock_excludes") v.flock_excludes = value == "1";
    else if (name == "filesystem") v.filesystem = value;
    else if (name == "reason") v.reason = value;
    else if (name.substr(0, 6) == "probe.") v.probe[std::string(name.substr(6))] = value;
  }
  return v;
}

std::optional<StoredVerdicts> load_from(const std::string& dir, const std::string& key) {
  auto dirfd = open_trusted_dir(dir);
  if (!dirfd) return std::nullopt;
  sys::UniqueFd fd(sys::open_nothrow(dirfd.get(), file_name(key), O_RDONLY | O_NOFOLLOW | O_NONBLOCK));
  struct stat st{};
  if (!fd || sys::fstat_nothrow(fd.get(), st) != 0 || !S_ISREG(st.st_mode) || !trusted(st)) return std::nullopt;
  auto text = sys::pread_all(fd.get(), size_t{64} * 1024);
  if (!text) return std::nullopt;
  return parse(*text, key);
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

std::string verdict_store_dir() { return own_dir(); }

std::optional<StoredVerdicts> load_verdicts(const std::string& key) {
  const std::string mine = own_dir();
  if (auto v = load_from(mine, key)) return v;
  if (mine != kRootDir) return load_from(kRootDir, key);
  return std::nullopt;
}

void store_verdicts(const std::string& key, const StoredVerdicts& update) {
  const std::string dir = own_dir();
  auto dirfd = open_trusted_dir(dir);
  if (!dirfd) {
    make_dirs(dir);
    dirfd = open_trusted_dir(dir);
    if (!dirfd) return;  // someone else's directory, or read-only: no cache, nothing forged
  }
  StoredVerdicts v = load_from(dir, key).value_or(StoredVerdicts{});
  if (update.ofd_excludes) v.ofd_excludes = update.ofd_excludes;
  if (update.flock_excludes) v.flock_excludes = update.flock_excludes;
  if (!update.filesystem.empty()) v.filesystem = update.filesystem;
  if (!update.reason.empty()) v.reason = update.reason;
  for (const auto& [prim, verdict] : update.probe) v.probe[prim] = verdict;

  std::string text = std::string(kMagic) + "\nkey " + key + "\n";
  if (v.ofd_excludes) text += std::string("ofd_excludes ") + (*v.ofd_excludes ? "1" : "0") + "\n";
  if (v.flock_excludes) text += std::string("flock_excludes ") + (*v.flock_excludes ? "1" : "0") + "\n";
  if (!v.filesystem.empty()) text += "filesystem " + one_line(v.filesystem) + "\n";
  if (!v.reason.empty()) text += "reason " + one_line(v.reason) + "\n";
  for (const auto& [prim, verdict] : v.probe) text += "probe." + prim + " " + verdict + "\n";

  // Write a private temp file and rename it over the entry: readers see the old or the new file.
  const std::string name = file_name(key);
  char tmp[64];
  std::snprintf(tmp, sizeof tmp, ".%s.%016" PRIx64, name.c_str(), sys::random_u64());
  sys::UniqueFd fd(sys::open_nothrow(dirfd.get(), tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW,
                                     ::geteuid() == 0 ? 0644 : 0600));
  if (!fd) return;
  bool ok = sys::write_all(fd.get(), text) == 0;
  fd.reset();
  if (!ok || ::renameat(dirfd.get(), tmp, dirfd.get(), name.c_str()) != 0) ::unlinkat(dirfd.get(), tmp, 0);
}

}  // namespace holdfast::probe_internal

namespace holdfast {

namespace probe_internal {

void remember_probe_report(const ProbeReport& report) {
  auto key = mount_key(report.directory);
  if (!key) return;
  StoredVerdicts s;
  for (const auto& r : report.results) {
    // An inconclusive run measured nothing: keep whatever an earlier probe found.
    if (r.verdict == Verdict::inconclusive) continue;
    s.probe[std::string(to_string(r.primitive))] = r.verdict == Verdict::unsafe ? "unsafe" : std::string(to_string(r.verdict));
  }
  if (!s.probe.empty()) store_verdicts(*key, s);
  forget_process_verdicts();  // this process must see what it just measured
}

}  // namespace probe_internal

}  // namespace holdfast
