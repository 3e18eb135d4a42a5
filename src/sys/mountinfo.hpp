// sys/mountinfo: the mount table as the kernel lists it in /proc/self/mountinfo (proc(5)).
// Parsing only; what a mount means is decided by the callers (probe, device, durable).
#pragma once

#include <cstdint>
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

}  // namespace holdfast::sys
