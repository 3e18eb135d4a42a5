#include "hand_over.hpp"

#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "holdfast/error.hpp"
#include "sys/linkage.hpp"

namespace holdfast::cli {

namespace {

char** kept_argv = nullptr;
std::string handed_over_by;  // the static command's path, in holdfast-dynamic after a hand-over

constexpr const char* kHandedOverBy = "HOLDFAST_HANDED_OVER_BY";

}  // namespace

std::string this_executable() {
  char path[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) throw Error(errno, "/proc/self/exe", "cannot find holdfast's own executable");
  return std::string(path, static_cast<size_t>(n));
}

namespace {

// holdfast-dynamic beside `executable` (a build tree), else where `make install` puts it relative
// to BINDIR (HOLDFAST_DYNAMIC_FROM_BINDIR, from CMake). `executable` is this_executable(), so the
// one found beside a `flock` symlink is the one beside the real file.
std::string dynamic_build(const std::string& executable) {
  const std::string dir = executable.substr(0, executable.rfind('/'));
  std::string path = dir + "/holdfast-dynamic";
  if (::access(path.c_str(), X_OK) == 0) return path;
  return dir + "/" HOLDFAST_DYNAMIC_FROM_BINDIR "/holdfast-dynamic";
}

}  // namespace

void keep_arguments(char** argv) {
  kept_argv = argv;
  if (const char* by = std::getenv(kHandedOverBy); by != nullptr) {
    handed_over_by = by;
    ::unsetenv(kHandedOverBy);
  }
}

std::string public_executable() { return handed_over_by.empty() ? this_executable() : handed_over_by; }

void hand_over_if_static(std::string_view need) {
  if (!sys::statically_linked()) return;
  if (kept_argv == nullptr) throw Error("", "hand over", "main() kept no arguments", exit_code::software);
  const std::string executable = this_executable();
  const std::string path = dynamic_build(executable);
  std::fflush(nullptr);
  if (::setenv(kHandedOverBy, executable.c_str(), 1) != 0) throw Error(errno, path, "hand over");
  ::execv(path.c_str(), kept_argv);
  const int err = errno;
  ::unsetenv(kHandedOverBy);
  throw Error(path, "run the dynamically linked holdfast (" + std::string(need) + " needs it)", std::strerror(err),
              exit_code::unavailable);
}

}  // namespace holdfast::cli
