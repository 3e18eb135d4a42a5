// The port as a shared resource: flock, UUCP lock files (stale by proof of death), TIOCEXCL, the
// holder named when busy, and termios that leaves the modem lines alone.
#include <gtest/gtest.h>
#include <pty.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>

#include "device/internal.hpp"
#include "holdfast/device.hpp"
#include "sim.hpp"

namespace holdfast::testing::device {
namespace {

using holdfast::device::Port;
namespace dx = holdfast::device::exit_code;

// A pty pair owned by the test; the board side never answers (enough for locking tests).
struct Pty {
  int master = -1, slave = -1;
  std::string name;
  Pty() {
    char buf[256];
    if (::openpty(&master, &slave, buf, nullptr, nullptr) != 0) throw std::runtime_error("openpty");
    name = buf;
  }
  ~Pty() {
    ::close(master);
    ::close(slave);
  }
  Pty(const Pty&) = delete;
  Pty& operator=(const Pty&) = delete;
};

// A child running `sleep 600`, killed and reaped on destruction.
struct Sleeper {
  pid_t pid;
  Sleeper() {
    pid = ::fork();
    if (pid == 0) {
      ::execlp("sleep", "sleep", "600", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Wait until it is sleep (its comm changed), so the name in messages is stable.
    for (int i = 0; i < 2000; ++i) {
      if (read_file("/proc/" + std::to_string(pid) + "/comm") == "sleep\n") break;
      ::usleep(1000);
    }
  }
  ~Sleeper() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  Sleeper(const Sleeper&) = delete;
  Sleeper& operator=(const Sleeper&) = delete;
};

class PortTest : public BoardTest {
 protected:
  std::string lock_for(const std::string& tty) { return dir / ("LCK.." + sys_basename(tty)); }
  static std::string sys_basename(const std::string& p) { return p.substr(p.rfind('/') + 1); }
};

TEST_F(PortTest, TakesAUucpLockInHdbFormatAndRemovesItOnRelease) {
  Pty pty;
  {
    auto port = Port::open(pty.name);
    EXPECT_EQ(read_file(lock_for(pty.name)), fmt_pid(::getpid()));
  }
  struct stat st{};
  EXPECT_NE(::stat(lock_for(pty.name).c_str(), &st), 0) << "lock file left behind";
}

TEST_F(PortTest, ALiveUucpHolderIsNamed) {
  Pty pty;
  Sleeper minicom;  // stands in for minicom: a live process whose pid is in the lock file
  spit(lock_for(pty.name), fmt_pid(minicom.pid));
  auto r = hf({"device", "exec", "--port", pty.name, "print(1)"});
  EXPECT_EQ(r.exit_code, dx::port_busy) << r.err;
  EXPECT_NE(r.err.find("held by sleep, pid " + std::to_string(minicom.pid)), std::string::npos) << r.err;
  EXPECT_EQ(read_file(lock_for(pty.name)), fmt_pid(minicom.pid)) << "a live holder's lock was touched";
}

TEST_F(PortTest, ADeadHoldersUucpLockIsReclaimed) {
  Pty pty;
  pid_t dead = fork_child([] { return 0; });
  wait_child(dead);
  spit(lock_for(pty.name), fmt_pid(dead));
  auto port = Port::open(pty.name);
  EXPECT_EQ(read_file(lock_for(pty.name)), fmt_pid(::getpid()));
}

TEST_F(PortTest, AReusedPidIsProvenStaleByItsStartTime) {
  Pty pty;
  Sleeper stranger;  // alive, but started long after the lock file was written
  spit(lock_for(pty.name), fmt_pid(stranger.pid));
  timespec old[2] = {{1000000, 0}, {1000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, lock_for(pty.name).c_str(), old, 0), 0);
  auto port = Port::open(pty.name);
  EXPECT_EQ(read_file(lock_for(pty.name)), fmt_pid(::getpid()));
}

TEST_F(PortTest, AnUnreadableLockFailsClosed) {
  Pty pty;
  spit(lock_for(pty.name), "garbage\n");
  auto r = hf({"device", "exec", "--port", pty.name, "print(1)"});
  EXPECT_EQ(r.exit_code, dx::port_busy) << r.err;
  EXPECT_EQ(read_file(lock_for(pty.name)), "garbage\n");
}

TEST_F(PortTest, AFlockHolderIsNamed) {
  Pty pty;
  int fd = ::open(pty.name.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);  // what pyserial's exclusive=True does
  auto r = hf({"device", "exec", "--port", pty.name, "--step-timeout", "200ms", "print(1)"});
  ::close(fd);
  EXPECT_EQ(r.exit_code, dx::port_busy) << r.err;
  EXPECT_NE(r.err.find("pid " + std::to_string(::getpid()) + " (flock)"), std::string::npos) << r.err;
}

TEST_F(PortTest, TwoHoldfastsExcludeEachOther) {
  Pty pty;
  auto port = Port::open(pty.name);
  auto r = hf({"device", "exec", "--port", pty.name, "print(1)"});
  EXPECT_EQ(r.exit_code, dx::port_busy) << r.err;
  EXPECT_NE(r.err.find("pid " + std::to_string(::getpid())), std::string::npos) << r.err;
  EXPECT_NE(holdfast::device::port_holder(pty.name), "");
}

TEST_F(PortTest, SetsTiocexclAgainstUnprivilegedOpeners) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to another user";
  Pty pty;
  auto port = Port::open(pty.name);
  ASSERT_EQ(::chmod(pty.name.c_str(), 0666), 0);
  pid_t child = fork_child([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 2;
    int fd = ::open(pty.name.c_str(), O_RDWR | O_NOCTTY);
    return fd < 0 && errno == EBUSY ? 0 : 1;
  });
  EXPECT_EQ(wait_child(child), 0) << "a second open did not get EBUSY";
}

TEST_F(PortTest, RawModeWithoutHangupOnClose) {
  Pty pty;
  termios before{};
  ASSERT_EQ(::tcgetattr(pty.slave, &before), 0);
  before.c_cflag |= HUPCL;
  ASSERT_EQ(::tcsetattr(pty.slave, TCSANOW, &before), 0);
  auto port = Port::open(pty.name);
  termios t{};
  ASSERT_EQ(::tcgetattr(pty.slave, &t), 0);
  EXPECT_EQ(t.c_cflag & HUPCL, 0U) << "closing would drop DTR/RTS";
  EXPECT_EQ(t.c_lflag & (ICANON | ECHO | ISIG), 0U);
  EXPECT_EQ(t.c_oflag & OPOST, 0U);
  EXPECT_NE(t.c_cflag & CLOCAL, 0U);
}

TEST(UucpFormat, ParsesAsciiAndBinaryPids) {
  using holdfast::device::detail::parse_uucp_pid;
  EXPECT_EQ(parse_uucp_pid("      1234\n"), 1234);
  EXPECT_EQ(parse_uucp_pid("1234 minicom root\n"), 1234);
  int bin = 4321;
  EXPECT_EQ(parse_uucp_pid(std::string(reinterpret_cast<const char*>(&bin), 4)), 4321);
  EXPECT_EQ(parse_uucp_pid("none"), 0);
  EXPECT_EQ(parse_uucp_pid(""), 0);
}

}  // namespace
}  // namespace holdfast::testing::device
