// Locking through `holdfast lock` never changes what it locks: a data file, a script, a read-only
// file, a directory, a symlink in a sticky directory keep their bytes and metadata, and nothing
// appears beside them (review C1; issue 8 "Never touch what is not ours").
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "holdfast/error.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::read_file;

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// What must not change: the bytes, and every field of lstat and stat but the access time (which
// our own reading of the bytes may move), and the directory the object lives in.
struct Snapshot {
  struct stat st {};
  struct stat lst {};
  std::string content;
  std::vector<std::string> siblings;

  static Snapshot of(const std::string& path, const std::string& dir) {
    Snapshot s;
    ::stat(path.c_str(), &s.st);
    ::lstat(path.c_str(), &s.lst);
    if (S_ISREG(s.st.st_mode)) s.content = read_file(path);
    s.siblings = listing(dir);
    return s;
  }
};

void expect_unchanged(const Snapshot& a, const Snapshot& b) {
  for (auto [x, y] : {std::pair{&a.st, &b.st}, std::pair{&a.lst, &b.lst}}) {
    EXPECT_EQ(x->st_ino, y->st_ino);
    EXPECT_EQ(x->st_mode, y->st_mode);
    EXPECT_EQ(x->st_uid, y->st_uid);
    EXPECT_EQ(x->st_gid, y->st_gid);
    EXPECT_EQ(x->st_size, y->st_size);
    EXPECT_EQ(x->st_nlink, y->st_nlink);
    EXPECT_EQ(x->st_mtim.tv_sec, y->st_mtim.tv_sec);
    EXPECT_EQ(x->st_mtim.tv_nsec, y->st_mtim.tv_nsec);
    EXPECT_EQ(x->st_ctim.tv_sec, y->st_ctim.tv_sec);
    EXPECT_EQ(x->st_ctim.tv_nsec, y->st_ctim.tv_nsec);
  }
  EXPECT_EQ(a.content, b.content);
  EXPECT_EQ(a.siblings, b.siblings);
}

// The ways a user locks an existing object: exclusive, shared, non-blocking, -F, --fcntl, -o.
const std::vector<std::vector<std::string>> kLockForms = {
    {}, {"-s"}, {"-n"}, {"-F"}, {"--fcntl"}, {"--fcntl", "-s"}, {"-o"}, {"-w", "5"},
};

void lock_every_way_and_compare(const std::string& path, const std::string& dir, bool directory = false) {
  const Snapshot before = Snapshot::of(path, dir);
  for (const auto& form : kLockForms) {
    // An exclusive OFD lock needs a descriptor open for writing, which a directory cannot have
    // (flock(1) --fcntl fails there too, with EBADF).
    if (directory && form == std::vector<std::string>{"--fcntl"}) continue;
    std::vector<std::string> args{"lock"};
    args.insert(args.end(), form.begin(), form.end());
    args.insert(args.end(), {path, "true"});
    auto r = testing::holdfast(args);
    SCOPED_TRACE("holdfast lock " + (form.empty() ? std::string() : form.front() + " ...") + " " + path);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    expect_unchanged(before, Snapshot::of(path, dir));
  }
}

TEST(LockDataSafety, NonEmptyDataFile) {
  testing::TempDir dir;
  {
    std::ofstream out(dir / "data.txt");
    for (int i = 1; i <= 2000; ++i) out << i << '\n';
  }
  ::chmod((dir / "data.txt").c_str(), 0640);
  lock_every_way_and_compare(dir / "data.txt", dir.path());
  // A dotlock backend on a user's file: the file is someone's lock (held), never rewritten.
  const Snapshot before = Snapshot::of(dir / "data.txt", dir.path());
  EXPECT_EQ(testing::holdfast({"lock", "-n", "--backend", "link", dir / "data.txt", "true"}).exit_code, 1);
  expect_unchanged(before, Snapshot::of(dir / "data.txt", dir.path()));
}

TEST(LockDataSafety, ScriptLockingItself) {
  testing::TempDir dir;
  {
    std::ofstream script(dir / "s.sh");
    script << "#!/bin/sh\n"
              "[ \"${FLOCKER}\" != \"$0\" ] && exec env FLOCKER=\"$0\" \"$HF\" lock -en \"$0\" \"$0\" \"$@\" || :\n"
              "echo \"critical section of $0\"\n";
  }
  ::chmod((dir / "s.sh").c_str(), 0755);
  const Snapshot before = Snapshot::of(dir / "s.sh", dir.path());
  auto r = testing::run({"env", "HF=" + testing::holdfast_path(), dir / "s.sh"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "critical section of " + dir / "s.sh" + "\n");
  expect_unchanged(before, Snapshot::of(dir / "s.sh", dir.path()));
  lock_every_way_and_compare(dir / "s.sh", dir.path());
}

TEST(LockDataSafety, Directory) {
  testing::TempDir dir;
  ::mkdir((dir / "d").c_str(), 0750);
  std::ofstream(dir / "d/inside") << "x";
  lock_every_way_and_compare(dir / "d", dir.path(), true);
  EXPECT_EQ(listing(dir / "d"), (std::vector<std::string>{".", "..", "inside"}));
}

TEST(LockDataSafety, ReadOnlyFile) {
  testing::TempDir dir;
  std::ofstream(dir / "ro") << "read only\n";
  ::chmod((dir / "ro").c_str(), 0444);
  lock_every_way_and_compare(dir / "ro", dir.path());
}

// As flock(1): a user who may only read a file (or a directory) can still lock it, shared or
// exclusive, and nothing is created in a directory the user cannot write.
TEST(LockDataSafety, ReadOnlyFileAndDirectoryOfAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  testing::TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  std::ofstream(dir / "rootfile") << "root's data\n";
  ::chmod((dir / "rootfile").c_str(), 0644);
  ::mkdir((dir / "rootdir").c_str(), 0755);
  const Snapshot file_before = Snapshot::of(dir / "rootfile", dir.path());
  const Snapshot dir_before = Snapshot::of(dir / "rootdir", dir.path());
  int rc = testing::wait_child(testing::fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 100;
    for (const std::string& target : {dir / "rootfile", dir / "rootdir"}) {
      for (const char* mode : {"-x", "-s"}) {
        auto r = testing::holdfast({"lock", mode, target, "true"});
        if (r.exit_code != 0) {
          std::fprintf(stderr, "%s %s: rc %d: %s", mode, target.c_str(), r.exit_code, r.err.c_str());
          return 101;
        }
      }
    }
    // What flock(1) cannot open either (a new file in root's directory) is 66, as with flock(1).
    return testing::holdfast({"lock", dir / "new", "true"}).exit_code;
  }));
  EXPECT_EQ(rc, exit_code::no_input);
  expect_unchanged(file_before, Snapshot::of(dir / "rootfile", dir.path()));
  expect_unchanged(dir_before, Snapshot::of(dir / "rootdir", dir.path()));
}

// A symlink planted in a sticky, world-writable directory: whatever holdfast does with it (locks
// its target, or refuses it), the target and the directory are unchanged, and a dangling one does
// not create its target.
TEST(LockDataSafety, SymlinkInStickyDirectory) {
  testing::TempDir dir;
  ::mkdir((dir / "tmp").c_str(), 01777);
  ::chmod((dir / "tmp").c_str(), 01777);
  std::ofstream(dir / "victim") << "precious\n";
  ASSERT_EQ(::symlink((dir / "victim").c_str(), (dir / "tmp/app.lock").c_str()), 0);
  ASSERT_EQ(::symlink((dir / "nonexistent").c_str(), (dir / "tmp/dangling.lock").c_str()), 0);
  const Snapshot victim = Snapshot::of(dir / "victim", dir.path());
  const Snapshot link = Snapshot::of(dir / "tmp/app.lock", dir / "tmp");
  for (const auto& form : kLockForms) {
    std::vector<std::string> args{"lock"};
    args.insert(args.end(), form.begin(), form.end());
    args.insert(args.end(), {dir / "tmp/app.lock", "true"});
    auto r = testing::holdfast(args);
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == exit_code::no_perm) << r.err;
    args[args.size() - 2] = dir / "tmp/dangling.lock";
    testing::holdfast(args);
  }
  expect_unchanged(victim, Snapshot::of(dir / "victim", dir.path()));
  expect_unchanged(link, Snapshot::of(dir / "tmp/app.lock", dir / "tmp"));
  EXPECT_NE(::access((dir / "nonexistent").c_str(), F_OK), 0) << "a dangling symlink created its target";
}

}  // namespace
}  // namespace holdfast
