// Discovery: serial ports with their USB identity, board drives (mounts with boot_out.txt), paired
// by USB serial number. Reads sysfs, /dev/serial/by-id and mountinfo under overridable roots.
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sys/file.hpp"
#include "sys/mountinfo.hpp"

namespace holdfast::device {

namespace {

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') out.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string real(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : "";
}

std::string attr(const std::string& dir, const std::string& name) {
  auto v = sys::read_file(dir + "/" + name, 4096);
  if (!v) return "";
  while (!v->empty() && (v->back() == '\n' || v->back() == ' ')) v->pop_back();
  return *v;
}

// The USB device directory above a sysfs device path (the first ancestor with idVendor).
std::string usb_device_above(std::string path, const std::string& sys_root) {
  while (path.size() > sys_root.size() && path.rfind(sys_root, 0) == 0) {
    struct stat st{};
    if (sys::stat_nothrow(path + "/idVendor", st) == 0) return path;
    path = sys::dirname_of(path);
  }
  return "";
}

}  // namespace

DiscoveryRoots DiscoveryRoots::from_environment() {
  DiscoveryRoots r;
  if (const char* v = std::getenv("HOLDFAST_SYSFS_ROOT"); v != nullptr && *v != '\0') r.sys = v;
  if (const char* v = std::getenv("HOLDFAST_DEV_ROOT"); v != nullptr && *v != '\0') r.dev = v;
  if (const char* v = std::getenv("HOLDFAST_MOUNTINFO"); v != nullptr && *v != '\0') r.mountinfo = v;
  return r;
}

std::vector<BoardInfo> list_boards(const DiscoveryRoots& roots) {
  const std::string sys_root = real(roots.sys);
  std::vector<SerialPortInfo> ports;
  // by-id names, keyed by the tty they point to.
  std::vector<std::pair<std::string, std::string>> by_id;
  const std::string by_id_dir = roots.dev + "/serial/by-id";
  for (const auto& name : entries(by_id_dir)) {
    char target[PATH_MAX];
    ssize_t n = ::readlink((by_id_dir + "/" + name).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    by_id.emplace_back(sys::basename_of(target), by_id_dir + "/" + name);
  }
  if (!sys_root.empty()) {
    for (const auto& tty : entries(sys_root + "/class/tty")) {
      std::string dev = real(sys_root + "/class/tty/" + tty + "/device");
      if (dev.empty()) continue;
      std::string usb = usb_device_above(dev, sys_root);
      if (usb.empty()) continue;
      SerialPortInfo p;
      p.device = roots.dev + "/" + tty;
      for (const auto& [t, link] : by_id) {
        if (t == tty) p.by_id = link;
      }
      p.usb_serial = attr(usb, "serial");
      p.vendor_id = attr(usb, "idVendor");
      p.product_id = attr(usb, "idProduct");
      p.manufacturer = attr(usb, "manufacturer");
      p.product = attr(usb, "product");
      ports.push_back(std::move(p));
    }
  }
  std::vector<DriveInfo> drives;
  for (const auto& m : sys::read_mountinfo(roots.mountinfo)) {
    const std::string& mnt = m.mount_point;
    struct stat st{};
    if (mnt.empty() || sys::stat_nothrow(mnt + "/boot_out.txt", st) != 0) continue;
    DriveInfo d;
    d.mount = mnt;
    d.source = m.source;
    auto boot = sys::read_file(mnt + "/boot_out.txt", 4096);
    if (boot) d.firmware = boot->substr(0, boot->find('\n'));
    if (!sys_root.empty() && d.source.rfind("/dev/", 0) == 0) {
      std::string blk = real(sys_root + "/class/block/" + sys::basename_of(d.source));
      if (!blk.empty()) {
        std::string usb = usb_device_above(blk, sys_root);
        if (!usb.empty()) d.usb_serial = attr(usb, "serial");
      }
    }
    drives.push_back(std::move(d));
  }
  std::vector<BoardInfo> boards;
  std::vector<bool> drive_used(drives.size(), false);
  for (auto& p : ports) {
    BoardInfo b;
    for (size_t i = 0; i < drives.size(); ++i) {
      if (!drive_used[i] && !p.usb_serial.empty() && drives[i].usb_serial == p.usb_serial) {
        b.drive = drives[i];
        drive_used[i] = true;
        break;
      }
    }
    b.port = std::move(p);
    boards.push_back(std::move(b));
  }
  for (size_t i = 0; i < drives.size(); ++i) {
    if (!drive_used[i]) boards.push_back(BoardInfo{std::nullopt, drives[i]});
  }
  return boards;
}

}  // namespace holdfast::device
