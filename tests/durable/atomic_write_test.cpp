// atomic_write / AtomicWriter / `holdfast write`: content, modes, owners, streaming, no leftovers,
// on tmpfs (/dev/shm) and ext4 (/tmp).
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;

namespace {

class AtomicWrite : public ::testing::TestWithParam<std::string> {
 protected:
  TempDir dir{GetParam()};
};

TEST_P(AtomicWrite, CreatesNewFileWithUmaskMode) {
  mode_t old = ::umask(022);
  atomic_write(dir / "new", "hello");
  ::umask(old);
  EXPECT_EQ(slurp(dir / "new"), "hello");
  EXPECT_EQ(mode_of(dir / "new"), 0644u);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"new"});
}

TEST_P(AtomicWrite, ModeOptionIsExact) {
  WriteOptions o;
  o.mode = 0751;
  atomic_write(dir / "m", "x", o);
  EXPECT_EQ(mode_of(dir / "m"), 0751u);
  auto r = hf({"write", "--mode", "0600", dir / "cli"}, "data");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(mode_of(dir / "cli"), 0600u);
  EXPECT_EQ(hf({"write", "--mode", "9z", dir / "cli"}, "x").exit_code, exit_code::usage);
  // An existing target keeps its mode whatever --mode says: it is the mode for new files.
  ::chmod((dir / "cli").c_str(), 0600);
  ASSERT_EQ(hf({"write", "--mode", "0644", dir / "cli"}, "new data").exit_code, 0);
  EXPECT_EQ(mode_of(dir / "cli"), 0600u);
  EXPECT_EQ(slurp(dir / "cli"), "new data");
}

TEST_P(AtomicWrite, ReplaceKeepsModeAndOwner) {
  spit(dir / "t", "old");
  ASSERT_EQ(::chmod((dir / "t").c_str(), 02640), 0);  // setgid bit survives too
  ASSERT_EQ(::chown((dir / "t").c_str(), 65534, 65534), 0);
  struct stat before {};
  ::stat((dir / "t").c_str(), &before);
  auto r = hf({"write", dir / "t"}, "new content");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat after {};
  ::stat((dir / "t").c_str(), &after);
  EXPECT_EQ(slurp(dir / "t"), "new content");
  EXPECT_EQ(after.st_mode & 07777, 02640u);
  EXPECT_EQ(after.st_uid, 65534u);
  EXPECT_EQ(after.st_gid, 65534u);
  EXPECT_NE(after.st_ino, before.st_ino);  // replaced, not rewritten in place
}

TEST_P(AtomicWrite, StreamingWriterCommitAndAbort) {
  spit(dir / "s", "old");
  {
    auto w = AtomicWriter::open(dir / "s");
    std::string chunk = pattern(1 << 20, 3);
    for (int i = 0; i < 3; ++i) w.write(chunk);
    EXPECT_EQ(slurp(dir / "s"), "old");  // nothing visible before commit
    EXPECT_EQ(w.bytes_written(), 3u << 20);
    w.commit();
    EXPECT_EQ(slurp(dir / "s"), chunk + chunk + chunk);
  }
  {
    auto w = AtomicWriter::open(dir / "s");
    w.write("discarded");
    w.abort();
  }
  {
    auto w = AtomicWriter::open(dir / "s");
    w.write("dropped by the destructor");
  }
  EXPECT_EQ(slurp(dir / "s").size(), 3u << 20);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"s"});
}

TEST_P(AtomicWrite, LargeStdinNoSyncAndEmpty) {
  std::string big = pattern(8u << 20, 9);
  auto r = hf({"write", dir / "big"}, big);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(dir / "big"), big);
  ASSERT_EQ(hf({"write", "--no-sync", dir / "big"}, "small").exit_code, 0);
  EXPECT_EQ(slurp(dir / "big"), "small");
  ASSERT_EQ(hf({"write", dir / "big"}, "").exit_code, 0);
  EXPECT_EQ(slurp(dir / "big"), "");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"big"});
}

TEST_P(AtomicWrite, FollowsSymlinkOutsideStickyDirs) {
  spit(dir / "real", "old");
  ASSERT_EQ(::symlink("real", (dir / "link").c_str()), 0);
  ASSERT_EQ(hf({"write", dir / "link"}, "via link").exit_code, 0);
  EXPECT_EQ(slurp(dir / "real"), "via link");
  struct stat st {};
  ASSERT_EQ(::lstat((dir / "link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_P(AtomicWrite, RelativePathAndConcurrentWritersNeverTear) {
  // Four writers replace one file 50 times each; a reader only ever sees one whole version.
  std::vector<std::string> versions;
  for (int i = 0; i < 4; ++i) versions.push_back(pattern(64 << 10, static_cast<uint64_t>(i) + 100));
  atomic_write(dir / "f", versions[0]);
  std::vector<pid_t> kids;
  for (int i = 0; i < 4; ++i) {
    kids.push_back(fork_child([&, i] {
      for (int k = 0; k < 50; ++k) atomic_write(dir / "f", versions[static_cast<size_t>(i)], WriteOptions{.sync = false});
      return 0;
    }));
  }
  int torn = 0;
  for (int k = 0; k < 200; ++k) {
    auto got = slurp(dir / "f");
    if (std::find(versions.begin(), versions.end(), got) == versions.end()) ++torn;
  }
  for (pid_t p : kids) EXPECT_EQ(wait_child(p), 0);
  EXPECT_EQ(torn, 0);
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"f"});
}

INSTANTIATE_TEST_SUITE_P(Fs, AtomicWrite, ::testing::ValuesIn(test_roots()),
                         [](const auto& info) { return info.param == "/dev/shm" ? std::string("tmpfs") : std::string("ext4"); });

TEST(Sync, FilesDirectoriesAndFilesystem) {
  TempDir dir;
  spit(dir / "a", "x");
  auto r = hf({"sync", dir / "a", dir.path()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(hf({"sync", "--fs", dir / "a"}).exit_code, 0);
  auto missing = hf({"sync", dir / "a", dir / "missing"});
  EXPECT_EQ(missing.exit_code, exit_code::no_input);
  EXPECT_NE(missing.err.find(dir / "missing"), std::string::npos);
  EXPECT_NO_THROW(sync_path(dir / "a"));
  EXPECT_THROW(sync_filesystem(dir / "missing"), Error);
}

}  // namespace
