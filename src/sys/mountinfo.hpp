// sys/mountinfo: the mount table as the kernel lists it in /proc/self/mountinfo (proc(5)).
// Parsing only; what a mount means is decided by the callers (probe, device, durable).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace holdfast::sys {

// One mountinfo line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
// root, mount_point and source have the kernel's \ooo escapes (space, tab, newline, backslash)
// undone; the other fields are as listed.
struct MountEntry {
  uint64_t id = 0;
  unsigned major = 0;
  unsigned minor = 0;
  std::string root, mount_point, mount_options, fstype, source, super_options;
};

// The entries of mountinfo-format `text`, in order. Lines without an ID or a MAJ:MIN are skipped.
std::vector<MountEntry> parse_mountinfo(std::string_view text);

// parse_mountinfo of the file at `path` (a test may pass a fake table); empty if it cannot be read.
std::vector<MountEntry> read_mountinfo(const std::string& path = "/proc/self/mountinfo");

// One mount as statmount(2) reports it, asked by the unique mount id that
// statx(STATX_MNT_ID_UNIQUE) gives. Only this mount is formatted, where reading
// /proc/self/mountinfo formats every mount of the namespace (cgroup and kernfs mounts included):
// ~0.1 ms of every `holdfast lock` with the auto backend on the reference machine, against ~0.015.
struct MountFacts {
  uint64_t unique_id = 0;
  unsigned major = 0;  // the superblock's device, as mountinfo's MAJ:MIN
  unsigned minor = 0;
  uint64_t attributes = 0;  // MOUNT_ATTR_*: mountinfo's per-mount options (ro, nosuid, nodev, noexec, atime, ...)
  uint32_t sb_flags = 0;    // SB_RDONLY, SB_SYNCHRONOUS, SB_DIRSYNC, SB_LAZYTIME
  std::string fstype;       // with its subtype as mountinfo writes it ("fuse.sshfs")
  std::string source;
  std::string super_options;  // the filesystem's own options, escaped as in mountinfo ("" if none)
};

// statmount(2) of the mount with this unique id in this process's mount namespace. nullopt where
// the kernel cannot report the source (statmount is Linux 6.8, its source field 6.11, and both
// options fields are older than the source), or refuses (a mount outside a chroot), or errs.
std::optional<MountFacts> stat_mount(uint64_t unique_id);

}  // namespace holdfast::sys
