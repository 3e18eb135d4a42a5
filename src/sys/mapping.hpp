// sys/mapping: a shared, writable mapping of the start of a file (mmap MAP_SHARED), unmapped on
// destruction. Loads and stores through it are the page cache itself, as pread/pwrite would
// see it, without a system call each; the caller must only touch bytes below the file's size
// (beyond it a store is lost and, past the last page, the access raises SIGBUS).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <utility>

namespace holdfast::sys {

class SharedMapping {
 public:
  SharedMapping() noexcept = default;
  // Maps `length` bytes of `fd` from offset 0; empty() if that fails.
  SharedMapping(int fd, size_t length) noexcept {
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      data_ = static_cast<char*>(p);
      length_ = length;
    }
  }
  SharedMapping(SharedMapping&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), length_(std::exchange(other.length_, 0)) {}
  SharedMapping& operator=(SharedMapping&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      length_ = std::exchange(other.length_, 0);
    }
    return *this;
  }
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping() { reset(); }

  void reset() noexcept {
    if (data_ != nullptr) ::munmap(data_, length_);
    data_ = nullptr;
    length_ = 0;
  }
  bool empty() const noexcept { return data_ == nullptr; }
  char* data() const noexcept { return data_; }
  size_t size() const noexcept { return length_; }

 private:
  char* data_ = nullptr;
  size_t length_ = 0;
};

}  // namespace holdfast::sys
