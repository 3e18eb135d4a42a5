#include "holdfast/error.hpp"

#include <cerrno>
#include <cstring>

namespace holdfast {

int exit_code::for_errno(int err) noexcept {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return no_input;
    case EACCES:
    case EPERM:
    case ELOOP:
      return no_perm;
    case EROFS:
    case EISDIR:
    case EEXIST:
    case ETXTBSY:
      return cant_create;
    case EIO:
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return io_error;
    case EINVAL:
    case ENOLCK:
    case EOPNOTSUPP:
    case ENOSYS:
      return unavailable;
    default:
      return os_error;
  }
}

namespace {
std::string describe(const std::string& path, const std::string& context, const std::string& cause) {
  std::string s;
  s.reserve(path.size() + context.size() + cause.size() + 4);
  if (!path.empty()) s.append(path).append(": ");
  s.append(context);
  if (!cause.empty()) s.append(": ").append(cause);
  return s;
}
}  // namespace

Error::Error(int err, std::string path, const std::string& context)
    : std::runtime_error(describe(path, context, std::strerror(err))),
      errno_(err),
      path_(std::move(path)),
      exit_(exit_code::for_errno(err)) {}

Error::Error(std::string path, const std::string& context, const std::string& cause, int exit)
    : std::runtime_error(describe(path, context, cause)), errno_(0), path_(std::move(path)), exit_(exit) {}

}  // namespace holdfast
