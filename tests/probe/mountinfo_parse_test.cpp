// sys::parse_mountinfo splits proc(5)'s mountinfo lines field by field: optional fields up to
// "-", octal escapes in root, mount point and source, malformed lines skipped.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "sys/mountinfo.hpp"

namespace holdfast::sys {
namespace {

TEST(ParseMountinfo, FieldsOptionalFieldsEscapesAndMalformedLines) {
  const std::string text =
      "36 35 98:0 /mnt1 /mnt/par\\040ent rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n"
      "garbage line\n"
      "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
      "\n"
      "4294967301 1 259:3 / /with\\011tab\\134 ro - tmpfs src\\040x rw,size=1k";  // no final newline
  auto m = parse_mountinfo(text);
  ASSERT_EQ(m.size(), 3U);
  EXPECT_EQ(m[0].id, 36U);
  EXPECT_EQ(m[0].major, 98U);
  EXPECT_EQ(m[0].minor, 0U);
  EXPECT_EQ(m[0].root, "/mnt1");
  EXPECT_EQ(m[0].mount_point, "/mnt/par ent");
  EXPECT_EQ(m[0].mount_options, "rw,noatime");
  EXPECT_EQ(m[0].fstype, "ext3");
  EXPECT_EQ(m[0].source, "/dev/root");
  EXPECT_EQ(m[0].super_options, "rw,errors=continue");
  EXPECT_EQ(m[1].id, 22U);
  EXPECT_EQ(m[1].fstype, "proc");
  EXPECT_EQ(m[2].id, 4294967301ULL);
  EXPECT_EQ(m[2].major, 259U);
  EXPECT_EQ(m[2].minor, 3U);
  EXPECT_EQ(m[2].mount_point, "/with\ttab\\");
  EXPECT_EQ(m[2].source, "src x");
  EXPECT_EQ(m[2].super_options, "rw,size=1k");
}

TEST(ParseMountinfo, ThisProcessTableHasTheRootMount) {
  auto m = read_mountinfo();
  ASSERT_FALSE(m.empty());
  bool root = false;
  for (const auto& e : m) root = root || e.mount_point == "/";
  EXPECT_TRUE(root);
}

// stat_mount (statmount(2), which the auto backend's mount key uses instead of reading the whole
// table) reports what mountinfo lists for the same mount: its device, type, source and the
// filesystem's own options (mountinfo's super options after ro/rw and the sync flags).
TEST(StatMount, AgreesWithMountinfoForEveryReachableMount) {
  constexpr unsigned kMntIdUnique = 0x00004000U;  // STATX_MNT_ID_UNIQUE, Linux 6.8
  int compared = 0;
  for (const auto& e : read_mountinfo()) {
    struct statx unique{}, old{};
    if (::statx(AT_FDCWD, e.mount_point.c_str(), AT_NO_AUTOMOUNT, kMntIdUnique, &unique) != 0 ||
        (unique.stx_mask & kMntIdUnique) == 0 ||
        ::statx(AT_FDCWD, e.mount_point.c_str(), AT_NO_AUTOMOUNT, STATX_MNT_ID, &old) != 0 || old.stx_mnt_id != e.id) {
      continue;  // over-mounted, or no unique ids on this kernel
    }
    auto m = stat_mount(unique.stx_mnt_id);
    if (!m) continue;  // a kernel without statmount's source field: mount_key reads mountinfo there
    ++compared;
    SCOPED_TRACE(e.mount_point);
    EXPECT_EQ(m->unique_id, unique.stx_mnt_id);
    EXPECT_EQ(m->major, e.major);
    EXPECT_EQ(m->minor, e.minor);
    EXPECT_EQ(m->fstype, e.fstype);
    EXPECT_EQ(m->source, e.source);
    if (m->super_options.empty()) {
      EXPECT_EQ(e.super_options.find('='), std::string::npos) << e.super_options;
    } else {
      const std::string tail = "," + m->super_options;
      ASSERT_GE(e.super_options.size(), tail.size());
      EXPECT_EQ(e.super_options.substr(e.super_options.size() - tail.size()), tail);
    }
    EXPECT_EQ((m->attributes & 0x1) != 0, e.mount_options.rfind("ro", 0) == 0);  // MOUNT_ATTR_RDONLY
  }
  if (compared == 0) GTEST_SKIP() << "no statmount with sources on this kernel (Linux < 6.11)";
}

TEST(StatMount, UnknownMountIdIsNotReported) {
  EXPECT_FALSE(stat_mount(0).has_value());
  EXPECT_FALSE(stat_mount(~uint64_t{0} - 7).has_value());
}

}  // namespace
}  // namespace holdfast::sys
