// sys/fd: an owned file descriptor. The platform layer under every capability.
#pragma once

#include <unistd.h>

#include <utility>

namespace holdfast::sys {

// Every descriptor holdfast opens carries O_CLOEXEC: a lock fd leaking into an unrelated child
// would keep the lock alive after we "release" it. Code that wants a child to inherit a descriptor
// clears FD_CLOEXEC on purpose, right before exec.
class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  // Closes the current descriptor (if any) and owns `fd`. close(2) errors are ignored: on Linux
  // the descriptor is gone either way, and retrying could close someone else's fd.
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace holdfast::sys
