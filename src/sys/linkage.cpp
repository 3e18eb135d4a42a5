#include "sys/linkage.hpp"

#include <string>

#include "holdfast/error.hpp"

// The linker defines _DYNAMIC, the address of the dynamic section, in every executable and shared
// object that has one, and only there: a statically linked executable leaves this weak reference
// null. (A process whose executable has a dynamic section ran the dynamic loader; the library's
// own code linked into a shared object, such as the Python module, sees that object's section.)
extern "C" {
extern const char _DYNAMIC[] __attribute__((weak));  // NOLINT(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): the linker's name
}

namespace holdfast::sys {

bool statically_linked() noexcept { return _DYNAMIC == nullptr; }

void require_dynamic_loader(std::string_view what, std::string_view purpose) {
  if (!statically_linked()) return;
  throw Error(std::string(what), std::string(purpose),
              "this holdfast is statically linked and cannot load it (run holdfast-dynamic)", exit_code::unavailable);
}

}  // namespace holdfast::sys
