// `device list` against a fake sysfs, /dev and mountinfo (HOLDFAST_SYSFS_ROOT, HOLDFAST_DEV_ROOT,
// HOLDFAST_MOUNTINFO): ports with by-id names and USB serials, drives with boot_out.txt, paired
// by USB serial number.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

void mkdirs(const std::string& path) { run({"mkdir", "-p", path}); }
void link(const std::string& target, const std::string& at) { ASSERT_EQ(::symlink(target.c_str(), at.c_str()), 0) << at; }

// One USB board: a CDC ACM port and (optionally) a mass-storage block device.
void add_usb_board(const std::string& sys, const std::string& usb, const std::string& serial,
                   const std::string& tty, const std::string& block) {
  std::string dev = sys + "/devices/pci0000:00/0000:00:14.0/usb1/" + usb;
  mkdirs(dev);
  spit(dev + "/idVendor", "239a\n");
  spit(dev + "/idProduct", "80f4\n");
  spit(dev + "/serial", serial + "\n");
  spit(dev + "/manufacturer", "Adafruit\n");
  spit(dev + "/product", "Feather M4\n");
  std::string intf = dev + "/" + usb + ":1.0";
  mkdirs(intf + "/tty/" + tty);
  link("../..", intf + "/tty/" + tty + "/device");
  mkdirs(sys + "/class/tty");
  link(intf + "/tty/" + tty, sys + "/class/tty/" + tty);
  if (!block.empty()) {
    std::string b = dev + "/" + usb + ":1.2/host0/target0:0:0/0:0:0:0/block/" + block.substr(0, 3) + "/" + block;
    mkdirs(b);
    mkdirs(sys + "/class/block");
    link(b, sys + "/class/block/" + block);
  }
}

TEST(DeviceList, PairsPortsAndDrivesByUsbSerial) {
  TempDir dir;
  std::string sys = dir / "sys", dev = dir / "dev";
  add_usb_board(sys, "1-1", "DEADBEEF", "ttyACM0", "sdb1");
  add_usb_board(sys, "1-2", "C0FFEE", "ttyACM1", "");
  // A non-USB tty is not a board.
  mkdirs(sys + "/devices/platform/serial8250/tty/ttyS0");
  link("../..", sys + "/devices/platform/serial8250/tty/ttyS0/device");
  link(sys + "/devices/platform/serial8250/tty/ttyS0", sys + "/class/tty/ttyS0");
  mkdirs(dev + "/serial/by-id");
  link("../../ttyACM0", dev + "/serial/by-id/usb-Adafruit_Feather_M4_DEADBEEF-if00");
  std::string drive = dir / "media/CIRCUIT PY";
  mkdirs(drive);
  spit(drive + "/boot_out.txt",
       "Adafruit CircuitPython 9.2.1 on 2024-11-20; Adafruit Feather M4 Express with samd51j19\n"
       "Board ID:feather_m4_express\nUID:DEADBEEF\n");
  std::string plain = dir / "media/USBSTICK";
  mkdirs(plain);
  std::string escaped = dir.path() + "/media/CIRCUIT\\040PY";
  spit(dir / "mountinfo", "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                          "36 25 8:17 / " + escaped + " rw,nosuid - vfat /dev/sdb1 rw\n"
                          "37 25 8:33 / " + plain + " rw - vfat /dev/sdc1 rw\n");
  ScopedEnv a("HOLDFAST_SYSFS_ROOT", sys), b("HOLDFAST_DEV_ROOT", dev), c("HOLDFAST_MOUNTINFO", dir / "mountinfo");
  auto r = hf({"device", "list", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2U) << j.dump(2);
  EXPECT_EQ(j[0]["port"]["device"], dev + "/ttyACM0");
  EXPECT_EQ(j[0]["port"]["by_id"], dev + "/serial/by-id/usb-Adafruit_Feather_M4_DEADBEEF-if00");
  EXPECT_EQ(j[0]["port"]["usb_serial"], "DEADBEEF");
  EXPECT_EQ(j[0]["port"]["vendor_id"], "239a");
  EXPECT_EQ(j[0]["drive"]["mount"], drive);
  EXPECT_EQ(j[0]["drive"]["usb_serial"], "DEADBEEF");
  EXPECT_EQ(j[0]["drive"]["firmware"],
            "Adafruit CircuitPython 9.2.1 on 2024-11-20; Adafruit Feather M4 Express with samd51j19");
  EXPECT_EQ(j[1]["port"]["device"], dev + "/ttyACM1");
  EXPECT_TRUE(j[1]["drive"].is_null());
  // Human form: one line per board.
  r = hf({"device", "list"});
  EXPECT_NE(r.out.find("ttyACM0 (" + dev + "/serial/by-id/usb-Adafruit_Feather_M4_DEADBEEF-if00) serial DEADBEEF"),
            std::string::npos)
      << r.out;
}

}  // namespace
}  // namespace holdfast::testing::device
