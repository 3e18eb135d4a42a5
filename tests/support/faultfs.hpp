// FaultFs: mount tools/faultfs (a FUSE filesystem that lies) for one test.
//
// Typical use:
//
//   if (auto why = testing::FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
//   testing::FaultFs fs("delay_data=300");          // -o options, comma-separated
//   write_file(fs / "out", "hello");                // through the mount
//   fs.control("fail_write=1:ENOSPC");              // change faults at run time
//
// Options (see docs/PROBE.md and tools/faultfs/faultfs.cpp):
//   nonatomic_create[=DELAY_US]  mkdir / O_EXCL / RENAME_NOREPLACE are check-then-act; racers can
//                                all win. link(2) stays atomic.
//   nolocks                      flock/fcntl/OFD locks always granted, never enforced (mount only).
//   delay_data=MS                size visible at once after write; bytes read as old/zero until MS
//                                ms after the writer's close (fsync lands them at once).
//   fail_write=N:EIO|ENOSPC[+]   the Nth write call after mount / after the last control() fails;
//                                with '+', every write from the Nth on.
//   fsync_lies                   fsync succeeds without syncing or landing delayed data.
//
// The binary is found via $HOLDFAST_FAULTFS_PATH, else the path CMake compiled into the test
// (HOLDFAST_FAULTFS_PATH), else next to the test executable's build tree.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "support/testing.hpp"

namespace holdfast::testing {

class FaultFs {
 public:
  // Mounts faultfs with `options` ("-o" list without the -o, may be empty) over a fresh, empty
  // backing directory inside a new TempDir under `under` ($TMPDIR or /tmp if empty). Returns once
  // the mount is live. Throws std::runtime_error (with faultfs's stderr) if it cannot mount;
  // call unavailable_reason() first to skip instead.
  explicit FaultFs(const std::string& options = "", const std::string& under = "");
  // Unmounts (fusermount3 -u, falling back to umount -l), reaps faultfs, removes the temp dir.
  ~FaultFs();
  FaultFs(const FaultFs&) = delete;
  FaultFs& operator=(const FaultFs&) = delete;

  // The mount point: operations here go through faultfs.
  const std::string& mount_path() const { return mount_; }
  // The backing directory: the real files, bypassing every fault.
  const std::string& backing_path() const { return backing_; }
  // The faultfs daemon (e.g. to SIGSTOP it: a filesystem that stops answering).
  pid_t pid() const { return pid_; }
  // mount_path() + "/" + name.
  std::string operator/(const std::string& name) const { return mount_ + "/" + name; }

  // Writes one "option=value" line to the control file, e.g. "fail_write=3:EIO" or
  // "delay_data=0". Resets the write counter used by fail_write. Throws std::runtime_error if
  // faultfs rejects the line (EINVAL) — nolocks cannot be changed after mount.
  void control(const std::string& line) const;
  // The control file's text: current settings and counters ("writes=N", "pending_extents=N").
  std::string control_state() const;

  // Empty if faultfs can be mounted here; otherwise why not (no /dev/fuse, not root and no
  // fusermount3, binary not built, mount refused). Probes by mounting once; the result is cached.
  static std::string unavailable_reason();
  // The faultfs binary that will be used (may not exist).
  static std::string binary_path();
  // Used by the header to register the CMake-provided path; tests need not call it.
  static bool register_binary_path(const char* path);

 private:
  std::unique_ptr<TempDir> dir_;
  std::string backing_;
  std::string mount_;
  pid_t pid_ = -1;
};

#ifdef HOLDFAST_FAULTFS_PATH
namespace {
[[maybe_unused]] const bool faultfs_path_registered =
    FaultFs::register_binary_path(HOLDFAST_FAULTFS_PATH);
}  // namespace
#endif

}  // namespace holdfast::testing

// Skips the current GoogleTest test, saying why, where faultfs cannot be mounted.
#define HOLDFAST_SKIP_WITHOUT_FUSE()                                                               \
  do {                                                                                             \
    if (auto why = ::holdfast::testing::FaultFs::unavailable_reason(); !why.empty()) GTEST_SKIP() << why; \
  } while (0)
