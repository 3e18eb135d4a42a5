// Following the board across a reset that re-enumerates its port under another name: the port
// is found again by its USB serial number (the `device list` machinery, here on a fake sysfs and
// /dev tree), reopened with the same locks, and the command continues where that is safe.
#include <gtest/gtest.h>
#include <sys/stat.h>


#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

namespace dx = holdfast::device::exit_code;
using holdfast::device::detail::sha256_hex;

void mkdirs(const std::string& path) { run({"mkdir", "-p", path}); }

class FollowTest : public BoardTest {
 protected:
  std::string sys = dir / "sys";
  std::string dev = dir / "dev";
  ScopedEnv sys_env{"HOLDFAST_SYSFS_ROOT", sys};
  ScopedEnv dev_env{"HOLDFAST_DEV_ROOT", dev};
  ScopedEnv mi_env{"HOLDFAST_MOUNTINFO", dir / "mountinfo"};

  // A USB board with serial `serial` whose CDC interface may appear as any of `ttys`.
  void usb_board(const std::string& serial, const std::vector<std::string>& ttys) {
    std::string usb = sys + "/devices/pci0000:00/usb1/1-1";
    mkdirs(usb);
    spit(usb + "/idVendor", "239a\n");
    spit(usb + "/idProduct", "80f4\n");
    spit(usb + "/serial", serial + "\n");
    mkdirs(sys + "/class/tty");
    for (const auto& t : ttys) {
      std::string node = usb + "/1-1:1.0/tty/" + t;
      mkdirs(node);
      ASSERT_EQ(::symlink("../..", (node + "/device").c_str()), 0);
      ASSERT_EQ(::symlink(node.c_str(), (sys + "/class/tty/" + t).c_str()), 0);
    }
    mkdirs(dev + "/serial/by-id");
    spit(dir / "mountinfo", "");
  }
  std::vector<std::string> board_args() {
    return {"--fs-dir", fs(), "--log", log(), "--link", dev + "/ttyACM0", "--relink", dev + "/ttyACM1",
            "--by-id", dev + "/serial/by-id/usb-sim_HFSIM1-if00", "--reenumerate-on-reboot"};
  }
};

TEST_F(FollowTest, DeployFollowsTheBoardToItsNewPortAndConfirmsTheReboot) {
  usb_board("HFSIM1", {"ttyACM0", "ttyACM1"});
  SimBoard board(board_args());
  spit(dir / "main.py", "print('new')\n");
  auto r = hf({"device", "deploy", "--port", dev + "/ttyACM0", dir / "main.py", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["rebooted"], true);
  EXPECT_EQ(j["reconnected"], dev + "/ttyACM1");
  ASSERT_EQ(events("reenumerated", 1).size(), 1U);
  auto runs = events("run", 1);
  ASSERT_GE(runs.size(), 1U);
  EXPECT_EQ(runs.back()["sha256"], sha256_hex("print('new')\n"));
  // The lock of the old name was released, the new one is free again too.
  EXPECT_EQ(run({"ls", dir.path()}).out.find("LCK.."), std::string::npos);
}

TEST_F(FollowTest, RebootFollowsTheBoardToItsNewPort) {
  usb_board("HFSIM1", {"ttyACM0", "ttyACM1"});
  spit(fs() + "/main.py", "print('main')\n");
  SimBoard board(board_args());
  auto r = hf({"device", "reboot", "--port", dev + "/ttyACM0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("reconnected: " + dev + "/ttyACM1"), std::string::npos) << r.err;
  ASSERT_EQ(events("reenumerated", 1).size(), 1U);
  r = hf({"device", "reboot", "--port", dev + "/ttyACM0", "--reconnect-timeout", "0"});
  EXPECT_NE(r.exit_code, 0) << "the old name must be gone";
}

// Without a port of that serial coming back, the reset is exit 86 naming the serial.
TEST_F(FollowTest, NoPortWithTheSerialIsExit86NamingIt) {
  usb_board("HFSIM1", {"ttyACM0"});  // ttyACM1 is not this board's
  SimBoard board(board_args());
  spit(dir / "main.py", "print('new')\n");
  auto r = hf({"device", "deploy", "--port", dev + "/ttyACM0", "--reconnect-timeout", "500ms", dir / "main.py"});
  EXPECT_EQ(r.exit_code, dx::board_reset) << r.err;
  EXPECT_NE(r.err.find("USB serial HFSIM1"), std::string::npos) << r.err;
}

// term keeps going on the new port: the board's output after the reset reaches the terminal, and
// keys typed afterwards reach the board.
TEST_F(FollowTest, TermReconnectsToTheNewPort) {
  usb_board("HFSIM1", {"ttyACM0", "ttyACM1"});
  SimBoard board(board_args());
  Term term({"--port", dev + "/ttyACM0"});
  term.type("\x02");  // Ctrl-B: the banner, so the terminal is connected
  ASSERT_TRUE(term.read_until(">>> ")) << term.seen();
  term.type("\x04");  // soft reboot: the board re-enumerates
  // Printed by the board only on its new port.
  ASSERT_TRUE(term.read_until("MPY: soft reboot")) << term.seen();
  term.type("hello");
  EXPECT_TRUE(term.read_until("hello")) << term.seen();
}

}  // namespace
}  // namespace holdfast::testing::device
