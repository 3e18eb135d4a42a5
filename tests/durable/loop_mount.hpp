// LoopExt2: a real block-device filesystem for one test — ext2 on a loop device over an image
// file — and the DEVICE's view of a file, read from the image with debugfs, bypassing the mount
// and this host's page cache for that filesystem. (The board's vfat is not in these machines'
// kernels; ext2 also keeps its metadata in the block device's cache, without a journal.)
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

#include "support/testing.hpp"

namespace holdfast::testing::durable {

class LoopExt2 {
 public:
  // Empty if a loop-mounted ext2 can be made here; else why not (to GTEST_SKIP).
  static std::string unavailable_reason() {
    if (::geteuid() != 0) return "needs root (loop mount)";
    for (const char* tool : {"mkfs.ext2", "debugfs", "mount", "umount"}) {
      if (run({"sh", "-c", std::string("command -v ") + tool}).exit_code != 0) {
        return std::string(tool) + " not installed (e2fsprogs / mount)";
      }
    }
    return {};
  }

  // Makes a `mib` MiB image, mkfs.ext2, mounts it with -o loop. Throws std::runtime_error.
  explicit LoopExt2(int mib = 32) : image_(dir_ / "device.img"), mount_(dir_ / "mnt") {
    if (run({"truncate", "-s", std::to_string(mib) + "M", image_}).exit_code != 0 ||
        run({"mkfs.ext2", "-q", "-F", image_}).exit_code != 0 || ::mkdir(mount_.c_str(), 0755) != 0) {
      throw std::runtime_error("LoopExt2: cannot make " + image_);
    }
    auto m = run({"mount", "-o", "loop", image_, mount_});
    if (m.exit_code != 0) throw std::runtime_error("LoopExt2: mount: " + m.err);
    mounted_ = true;
  }
  ~LoopExt2() {
    if (!mounted_) return;
    // A helper thread of the code under test may still hold a file open for a moment.
    for (int i = 0; i < 50; ++i) {
      if (run({"umount", mount_}).exit_code == 0) return;
      ::usleep(100000);
    }
    (void)run({"umount", "-l", mount_});
  }
  LoopExt2(const LoopExt2&) = delete;
  LoopExt2& operator=(const LoopExt2&) = delete;

  std::string operator/(const std::string& name) const { return mount_ + "/" + name; }
  const std::string& image() const { return image_; }
  const std::string& mount_path() const { return mount_; }

  // What the device holds for /NAME right now: `debugfs -R 'cat /NAME' IMAGE` (empty if the
  // device has no such file yet).
  std::string device_view(const std::string& name) const {
    return run({"debugfs", "-R", "cat /" + name, image_}).out;
  }

 private:
  TempDir dir_;
  std::string image_;
  std::string mount_;
  bool mounted_ = false;
};

}  // namespace holdfast::testing::durable
