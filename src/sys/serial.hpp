// sys/serial: a tty put into raw mode without touching its modem lines, and TIOCEXCL. Used by the
// device capability; syscalls only.
#pragma once

namespace holdfast::sys {

// Raw 8N1 at `baud` (0 = keep the current speed), CLOCAL|CREAD, VMIN=VTIME=0, HUPCL cleared so a
// close never drops DTR/RTS (ESP32 boards reset on that edge). Never issues TIOCM* ioctls.
// Returns 0 or -errno.
int serial_make_raw(int fd, unsigned baud) noexcept;

// TIOCEXCL: further open(2)s of this tty fail with EBUSY (except for CAP_SYS_ADMIN). TIOCNXCL on
// release. Return 0 or -errno.
int serial_set_exclusive(int fd, bool exclusive) noexcept;

}  // namespace holdfast::sys
