// Filesystem facts for a directory: statfs type and its line in /proc/self/mountinfo.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/hex.hpp"
#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "holdfast/identity.hpp"
#include "probe/internal.hpp"
#include "sys/file.hpp"
#include "sys/mountinfo.hpp"

namespace holdfast {

namespace probe_internal {

std::string fs_type_name(uint64_t magic) {
  static const std::pair<uint64_t, const char*> kNames[] = {
      {0xEF53, "ext4"},          {0x01021994, "tmpfs"},     {0x58465342, "xfs"},
      {0x9123683E, "btrfs"},     {0x6969, "nfs"},           {0x65735546, "fuse"},
      {0x794c7630, "overlayfs"}, {0x4d44, "vfat"},          {0x2011BAB0, "exfat"},
      {0x5346544e, "ntfs"},      {0x7366746e, "ntfs3"},     {0xFF534D42, "cifs"},
      {0xFE534D42, "smb2"},      {0x01021997, "9p"},        {0x2fc12fc1, "zfs"},
      {0x00c36400, "ceph"},      {0x858458f6, "ramfs"},     {0x9fa0, "proc"},
      {0x62656572, "sysfs"},     {0xF2F52010, "f2fs"},      {0x73717368, "squashfs"},
      {0x958458f6, "hugetlbfs"}, {0xf15f, "ecryptfs"},      {0x01161970, "gfs2"},
      {0x0BD00BD0, "lustre"},    {0x5346414F, "afs"},       {0x6a656a63, "fakeowner"},
      {0x517B, "smb"},           {0x3153464a, "jfs"},       {0x52654973, "reiserfs"},
      {0x137d, "ext"},           {0x9660, "isofs"},         {0x15013346, "udf"},
  };
  for (const auto& [m, name] : kNames) {
    if (m == magic) return name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "unknown(0x%llx)", static_cast<unsigned long long>(magic));
  return buf;
}

std::optional<std::string> mount_key(const std::string& path) {
#ifndef STATX_MNT_ID_UNIQUE
  constexpr unsigned kMntIdUnique = 0x00004000U;  // Linux 6.8 <linux/stat.h>
#else
  constexpr unsigned kMntIdUnique = STATX_MNT_ID_UNIQUE;
#endif
  // The unique id keys the cache (never reused while the machine is up, unlike the old one).
  struct statx unique{};
  if (::statx(AT_FDCWD, path.c_str(), 0, kMntIdUnique, &unique) != 0 || (unique.stx_mask & kMntIdUnique) == 0) {
    return std::nullopt;
  }
  // Read once per process (the holder record needs it too).
  const std::string& boot = this_boot_id();
  if (boot.empty()) return std::nullopt;
  // The mount's facts from statmount(2) where the kernel has it (one mount formatted, not the
  // whole table). Which of the two forms a key takes depends only on the kernel and the mount, so
  // every process on this boot computes the same key for the same mount (holdfast probe's
  // verdicts are found by the lock that consults them).
  if (auto m = sys::stat_mount(unique.stx_mnt_id)) {
    if (m->major != unique.stx_dev_major || m->minor != unique.stx_dev_minor) return std::nullopt;  // raced a mount change
    return "boot=" + boot + " mnt=" + std::to_string(m->unique_id) + " dev=" + std::to_string(m->major) + ":" +
           std::to_string(m->minor) + " type=" + m->fstype + " source=" + m->source + " attr=" + hex(m->attributes) +
           " sb=" + hex(m->sb_flags) + " options=" + m->super_options;
  }
  // Before Linux 6.11: the old, reusable id finds the mount's line in mountinfo.
  struct statx old{};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_MNT_ID, &old) != 0 || (old.stx_mask & STATX_MNT_ID) == 0) {
    return std::nullopt;
  }
  for (const auto& m : sys::read_mountinfo()) {
    if (m.id != old.stx_mnt_id) continue;
    if (m.major != old.stx_dev_major || m.minor != old.stx_dev_minor) return std::nullopt;  // raced a mount change
    return "boot=" + boot + " mnt=" + std::to_string(unique.stx_mnt_id) + " dev=" + std::to_string(m.major) +
           ":" + std::to_string(m.minor) + " type=" + m.fstype + " source=" + m.source +
           " options=" + m.mount_options + ";" + m.super_options;
  }
  return std::nullopt;
}

}  // namespace probe_internal

FilesystemInfo filesystem_info(const std::string& directory) {
  using namespace probe_internal;
  FilesystemInfo info;
  struct statfs sfs{};
  if (::statfs(directory.c_str(), &sfs) != 0) throw Error(errno, directory, "statfs");
  info.magic = static_cast<uint64_t>(sfs.f_type);
  info.type = fs_type_name(info.magic);
  struct stat st{};
  if (int rc = sys::stat_nothrow(directory, st); rc != 0) throw Error(-rc, directory, "stat");
  info.dev = st.st_dev;

  // The mount: by statx mount ID where the kernel has it, else the deepest mount point on the
  // same device that prefixes the directory's real path.
  uint64_t mnt_id = 0;
#ifdef STATX_MNT_ID
  struct statx sx{};
  if (::statx(AT_FDCWD, directory.c_str(), 0, STATX_MNT_ID, &sx) == 0 &&
      (sx.stx_mask & STATX_MNT_ID) != 0) {
    mnt_id = sx.stx_mnt_id;
  }
#endif
  char* real = ::realpath(directory.c_str(), nullptr);
  std::string real_path = real != nullptr ? real : directory;
  std::free(real);
  const sys::MountEntry* best = nullptr;
  auto mounts = sys::read_mountinfo();
  for (const auto& m : mounts) {
    if (mnt_id != 0) {
      if (m.id == mnt_id) best = &m;
      continue;
    }
    if (m.major != major(st.st_dev) || m.minor != minor(st.st_dev)) continue;
    bool prefix = real_path == m.mount_point || m.mount_point == "/" ||
                  real_path.rfind(m.mount_point + "/", 0) == 0;
    if (prefix && (best == nullptr || m.mount_point.size() >= best->mount_point.size())) best = &m;
  }
  if (best != nullptr) {
    info.mount_type = best->fstype;
    info.mount_point = best->mount_point;
    info.source = best->source;
    // Per-mount options, then superblock options not already listed.
    std::vector<std::string> seen;
    for (const auto* list : {&best->mount_options, &best->super_options}) {
      std::istringstream opts(*list);
      std::string opt;
      while (std::getline(opts, opt, ',')) {
        if (opt.empty() || std::find(seen.begin(), seen.end(), opt) != seen.end()) continue;
        seen.push_back(opt);
        info.options += (info.options.empty() ? "" : ",") + opt;
      }
    }
  }
  return info;
}

}  // namespace holdfast
