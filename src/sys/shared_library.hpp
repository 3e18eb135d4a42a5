#pragma once
// Loading a shared library on first use instead of linking it: what only some commands need
// (libcurl for etcd, libcrypto for sha256) then costs nothing at the start of every other one.

#include <string>

namespace holdfast::sys {

// A shared library loaded with dlopen(RTLD_NOW | RTLD_LOCAL) and never unloaded (its functions
// may be in use until the process ends). Construction throws holdfast::Error(unavailable, 69)
// naming the library and `purpose` ("etcd backend needs libcurl") if it cannot be loaded, or if
// this process is statically linked (sys/linkage.hpp) and so must not load anything; bind()
// throws the same way for a missing symbol. Immutable after construction; safe to share.
class SharedLibrary {
 public:
  SharedLibrary(std::string soname, std::string purpose);
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;

  // Sets the function pointer `f` to the library's `symbol`; its type is the caller's promise.
  template <typename F>
  void bind(F& f, const char* symbol) const {
    f = reinterpret_cast<F>(address_of(symbol));  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast): dlsym
  }

 private:
  void* address_of(const char* symbol) const;
  std::string soname_;
  std::string purpose_;
  void* handle_ = nullptr;
};

}  // namespace holdfast::sys
