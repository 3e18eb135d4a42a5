// sys::parse_mountinfo splits proc(5)'s mountinfo lines field by field: optional fields up to
// "-", octal escapes in root, mount point and source, malformed lines skipped.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace holdfast::sys
