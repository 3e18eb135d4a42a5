#include "sys/shared_library.hpp"

#include <dlfcn.h>

#include <utility>

#include "holdfast/error.hpp"
#include "sys/linkage.hpp"

namespace holdfast::sys {

SharedLibrary::SharedLibrary(std::string soname, std::string purpose)
    : soname_(std::move(soname)), purpose_(std::move(purpose)) {
  require_dynamic_loader(soname_, purpose_);
  handle_ = ::dlopen(soname_.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle_ == nullptr) {
    const char* why = ::dlerror();
    throw Error(soname_, purpose_, why != nullptr ? why : "cannot load", exit_code::unavailable);
  }
}

void* SharedLibrary::address_of(const char* symbol) const {
  void* address = ::dlsym(handle_, symbol);
  if (address == nullptr) throw Error(soname_, purpose_, std::string("missing symbol ") + symbol, exit_code::unavailable);
  return address;
}

}  // namespace holdfast::sys
