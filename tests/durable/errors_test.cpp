// Every error path of `holdfast write`: one line naming the path and cause, the documented exit
// code, the target untouched and no temp file left behind.
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <gtest/gtest.h>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "support/faultfs.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;

namespace {

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

TEST(WriteErrors, MissingDirectory) {
  TempDir dir;
  auto r = hf({"write", dir / "no/such/file"}, "x");
  EXPECT_EQ(r.exit_code, exit_code::no_input);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find(dir / "no/such/file"), std::string::npos);
  EXPECT_NE(r.err.find("No such file or directory"), std::string::npos);
}

TEST(WriteErrors, DirectoryAsTarget) {
  TempDir dir;
  ASSERT_EQ(::mkdir((dir / "d").c_str(), 0755), 0);
  for (std::string p : {dir / "d", dir / "d/", dir / "d/."}) {
    auto r = hf({"write", p}, "x");
    EXPECT_EQ(r.exit_code, exit_code::cant_create) << p;
    EXPECT_NE(r.err.find("Is a directory"), std::string::npos) << r.err;
  }
  EXPECT_EQ(list_dir(dir / "d").size(), 0u);
}

TEST(WriteErrors, SymlinkInStickyWorldWritableDir) {
  TempDir dir;
  TempDir outside;
  spit(outside / "victim", "precious");
  ASSERT_EQ(::chmod(dir.path().c_str(), 01777), 0);
  ASSERT_EQ(::symlink((outside / "victim").c_str(), (dir / "link").c_str()), 0);
  auto r = hf({"write", dir / "link"}, "evil");
  EXPECT_EQ(r.exit_code, exit_code::no_perm);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find(dir / "link"), std::string::npos);
  EXPECT_NE(r.err.find("symlink"), std::string::npos);
  EXPECT_EQ(slurp(outside / "victim"), "precious");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"link"});
}

TEST(WriteErrors, PermissionDeniedAsUnprivilegedUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to uid 65534";
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  spit(dir / "t", "old");
  auto* msg = static_cast<char*>(shared_memory(4096));
  pid_t pid = fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 90;
    try {
      atomic_write(dir / "t", "new");
    } catch (const Error& e) {
      std::strncpy(msg, e.what(), 4000);
      auto r = hf({"write", dir / "t"}, "new");  // and the command, same failure
      if (r.exit_code != e.exit_code()) return 91;
      return e.exit_code();
    }
    return 0;
  });
  EXPECT_EQ(wait_child(pid), exit_code::no_perm);
  EXPECT_NE(std::string(msg).find("Permission denied"), std::string::npos) << msg;
  EXPECT_NE(std::string(msg).find(dir / "t"), std::string::npos) << msg;
  EXPECT_EQ(slurp(dir / "t"), "old");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"t"});
  free_shared_memory(msg, 4096);
}

// A tmpfs mounted in a temp dir; unmounted on destruction.
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, const std::string& opts) : dir_(dir) {
    ::mkdir(dir.c_str(), 0755);
    ok_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!ok_) why_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (ok_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  void remount_ro() { ::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, nullptr); }

 private:
  std::string dir_;
  bool ok_ = false;
  std::string why_;
};

TEST(WriteErrors, ReadOnlyFilesystem) {
  TempDir dir;
  TmpfsMount m(dir / "ro", "size=1m");
  if (!m.ok()) GTEST_SKIP() << "cannot mount tmpfs: " << m.why();
  spit(dir / "ro/t", "old");
  m.remount_ro();
  auto r = hf({"write", dir / "ro/t"}, "new");
  EXPECT_EQ(r.exit_code, exit_code::cant_create);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("Read-only file system"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dir / "ro/t"), std::string::npos);
  EXPECT_EQ(slurp(dir / "ro/t"), "old");
}

TEST(WriteErrors, NoSpaceOnRealTmpfs) {
  TempDir dir;
  TmpfsMount m(dir / "small", "size=256k");
  if (!m.ok()) GTEST_SKIP() << "cannot mount tmpfs: " << m.why();
  spit(dir / "small/t", "old");
  auto r = hf({"write", dir / "small/t"}, pattern(1 << 20, 5));
  EXPECT_EQ(r.exit_code, exit_code::io_error);
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("target untouched"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir / "small/t"), "old");
  EXPECT_EQ(list_dir(dir / "small"), std::vector<std::string>{"t"});
}

class FaultWrite : public ::testing::TestWithParam<std::string> {};

TEST_P(FaultWrite, WriteErrorLeavesTargetIntact) {
  if (auto why = FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  FaultFs fs;
  spit(fs / "t", "old");
  fs.control("fail_write=2:" + GetParam());
  auto r = hf({"write", fs / "t"}, pattern(1 << 20, 8));
  EXPECT_EQ(r.exit_code, exit_code::io_error);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find(fs / "t"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(GetParam() == "EIO" ? "Input/output error" : "No space left on device"), std::string::npos)
      << r.err;
  fs.control("fail_write=0");
  EXPECT_EQ(slurp(fs / "t"), "old");
  EXPECT_EQ(list_dir(fs.backing_path()), std::vector<std::string>{"t"});
  // And the same writer succeeds once the fault is gone.
  ASSERT_EQ(hf({"write", fs / "t"}, "new").exit_code, 0);
  EXPECT_EQ(slurp(fs / "t"), "new");
  EXPECT_EQ(list_dir(fs.backing_path()), std::vector<std::string>{"t"});
}

INSTANTIATE_TEST_SUITE_P(Errno, FaultWrite, ::testing::Values("EIO", "ENOSPC"));

// faultfs cannot fail fsync, so a tiny LD_PRELOAD shim makes the Nth fsync(2) fail with EIO. A
// static holdfast loads no shim: the test runs its dynamically linked build (the same objects).
std::string build_fsync_shim(const TempDir& dir) {
  std::string src = dir / "shim.c";
  spit(src,
       "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <errno.h>\n#include <stdlib.h>\n"
       "static int calls;\n"
       "int fsync(int fd) {\n"
       "  static int (*real)(int);\n"
       "  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, \"fsync\");\n"
       "  const char* n = getenv(\"FAIL_FSYNC_N\");\n"
       "  if (n && ++calls == atoi(n)) { errno = EIO; return -1; }\n"
       "  return real(fd);\n}\n");
  auto r = run({"cc", "-shared", "-fPIC", "-o", dir / "shim.so", src, "-ldl"});
  return r.exit_code == 0 ? dir / "shim.so" : "";
}

TEST(WriteErrors, FsyncFailureIsFatal) {
  TempDir dir;
  std::string shim = build_fsync_shim(dir);
  if (shim.empty()) GTEST_SKIP() << "no C compiler for the fsync shim";
  spit(dir / "t", "old");
  // 1st fsync = the temp file's data: fatal, target untouched, temp gone.
  auto r = run({"env", "ASAN_OPTIONS=verify_asan_link_order=0", "LD_PRELOAD=" + shim, "FAIL_FSYNC_N=1", dynamic_holdfast_path(), "write", dir / "t"}, "new");
  if (r.err.find("ASan") != std::string::npos) GTEST_SKIP() << "LD_PRELOAD conflicts with sanitizers";
  EXPECT_EQ(r.exit_code, exit_code::io_error);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("fsync"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Input/output error"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(dir / "t"), "old");
  auto names = list_dir(dir.path());
  std::erase_if(names, [](const std::string& n) { return n.starts_with("shim"); });
  EXPECT_EQ(names, std::vector<std::string>{"t"});
  // 2nd fsync = the directory after the rename: still an error (durability unknown), never ok.
  auto d = run({"env", "ASAN_OPTIONS=verify_asan_link_order=0", "LD_PRELOAD=" + shim, "FAIL_FSYNC_N=2", dynamic_holdfast_path(), "write", dir / "t"}, "new");
  EXPECT_EQ(d.exit_code, exit_code::io_error);
  EXPECT_NE(d.err.find("durability unknown"), std::string::npos) << d.err;
  // sync reports it too.
  auto s = run({"env", "ASAN_OPTIONS=verify_asan_link_order=0", "LD_PRELOAD=" + shim, "FAIL_FSYNC_N=1", dynamic_holdfast_path(), "sync", dir / "t"});
  EXPECT_EQ(s.exit_code, exit_code::io_error);
  EXPECT_NE(s.err.find("fsync"), std::string::npos);
}

}  // namespace
