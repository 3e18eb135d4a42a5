#include "sys/serial.hpp"

#include <sys/ioctl.h>
#include <termios.h>

#include <cerrno>

namespace holdfast::sys {

namespace {
speed_t speed_for(unsigned baud) noexcept {
  switch (baud) {
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
    case 230400: return B230400;
    case 460800: return B460800;
    case 921600: return B921600;
    default: return B0;
  }
}
}  // namespace

int serial_make_raw(int fd, unsigned baud) noexcept {
  termios t{};
  if (::tcgetattr(fd, &t) != 0) return -errno;
  ::cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  t.c_cflag &= ~static_cast<tcflag_t>(HUPCL | CRTSCTS);
  t.c_cc[VMIN] = 0;
  t.c_cc[VTIME] = 0;
  // B0 would mean "hang up" (drop DTR): never set it; an unknown rate keeps the current one.
  speed_t s = speed_for(baud);
  if (s != B0) {
    ::cfsetispeed(&t, s);
    ::cfsetospeed(&t, s);
  }
  if (::tcsetattr(fd, TCSANOW, &t) != 0) return -errno;
  return 0;
}

int serial_set_exclusive(int fd, bool exclusive) noexcept {
  if (::ioctl(fd, exclusive ? TIOCEXCL : TIOCNXCL) != 0) return -errno;
  return 0;
}

}  // namespace holdfast::sys
