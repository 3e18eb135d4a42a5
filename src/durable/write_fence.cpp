#include "durable/write_fence.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

#include <fmt/format.h>
#include <xxhash.h>

#include "holdfast/error.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::durable {
namespace {

// "holdfast-write-fence 1 <token: 20 digits> <file name>\n": fixed width up to the name, so a
// rewrite in place never changes the length (no truncate, no torn tail).
constexpr std::string_view kMagic = "holdfast-write-fence 1 ";
constexpr size_t kTokenDigits = 20;
constexpr size_t kRecordLimit = 4096;

std::string format_record(uint64_t token, const std::string& base) {
  return fmt::format("{}{:020} {}\n", kMagic, token, base);
}

}  // namespace

std::optional<uint64_t> parse_fence_token(const std::string& text) {
  if (text.empty() || text.size() > kTokenDigits) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

WriteFence::WriteFence(std::string path, std::string target, std::string record_path, sys::UniqueFd fd,
                       std::string base, std::optional<uint64_t> recorded)
    : path_(std::move(path)),
      target_(std::move(target)),
      record_path_(std::move(record_path)),
      fd_(std::move(fd)),
      base_(std::move(base)),
      recorded_(recorded) {}

WriteFence WriteFence::lock(int dirfd, const std::string& dir, const std::string& base, const std::string& path) {
  struct stat dst {};
  if (int rc = sys::fstat_nothrow(dirfd, dst); rc < 0) throw Error(-rc, path, "stat parent directory");
  std::string why;
  auto paths = lock_internal::side_state_for(dirfd, dst, &why);
  if (!paths) throw Error(path, "fence", "state directory: " + why, exit_code::os_error);
  // Anyone who may replace the file may fence it; records are trusted from root, us and the
  // directory's owner (open_state_file's rule), so another user cannot plant a huge token.
  paths->may_create = ::faccessat(dirfd, ".", W_OK, AT_EACCESS) == 0 || paths->may_create;
  paths->mode = 0644;
  // paths->fence is "<dir>/<directory identity>.fence"; ours sits beside it, one per file name.
  std::string file = paths->fence.substr(0, paths->fence.size() - 6) +
                     fmt::format(".{:016x}.write-fence", XXH64(base.data(), base.size(), 0));
  int fd = lock_internal::open_state_file(*paths, file);
  if (fd == -EPERM) {
    throw Error(path, "fence", file + " is owned by a user this one must not trust (remove it)", exit_code::no_perm);
  }
  if (fd < 0) throw Error(-fd, path, "open fence record " + file);
  sys::UniqueFd owned(fd);
  for (;;) {
    int rc = sys::kernel_lock(fd, sys::KernelLockKind::ofd, /*exclusive=*/true, /*wait=*/true);
    if (rc == 0) break;
    if (rc != -EINTR) throw Error(-rc, path, "lock fence record " + file);
  }
  auto text = sys::pread_all(fd, kRecordLimit);
  if (!text) throw Error(errno, path, "read fence record " + file);
  uint64_t recorded = 0;
  if (!text->empty()) {
    const std::string expected_tail = " " + base + "\n";
    const size_t token_at = kMagic.size();
    std::optional<uint64_t> token;
    if (text->size() == token_at + kTokenDigits + expected_tail.size() && text->starts_with(kMagic) &&
        text->compare(token_at + kTokenDigits, std::string::npos, expected_tail) == 0) {
      token = parse_fence_token(text->substr(token_at, kTokenDigits));
    }
    if (!token) {
      throw Error(path, "fence", "corrupt fence record " + file + " (or one for another file name: remove it)",
                  exit_code::data);
    }
    recorded = *token;
  }
  return WriteFence(path, dir + "/" + base, std::move(file), std::move(owned), base, text->empty() ? std::nullopt : std::optional<uint64_t>(recorded));
}

uint64_t WriteFence::highest() const {
  char buf[32];
  ssize_t n = ::lgetxattr(target_.c_str(), kFenceXattr, buf, sizeof buf - 1);
  if (n < 0) {
    // No file yet, no attribute, or no user xattrs here: the record alone speaks.
    if (errno == ENOENT || errno == ENODATA || errno == ENOTSUP) return recorded_.value_or(0);
    throw Error(errno, path_, std::string("read extended attribute ") + kFenceXattr);
  }
  auto token = parse_fence_token(std::string(buf, static_cast<size_t>(n)));
  if (!token) {
    throw Error(path_, "fence", std::string("extended attribute ") + kFenceXattr + " is not a decimal token",
                exit_code::data);
  }
  return std::max(*token, recorded_.value_or(0));
}

void WriteFence::accept(uint64_t token, int tmpfd, bool sync) {
  const std::string value = std::to_string(token);
  if (::fsetxattr(tmpfd, kFenceXattr, value.data(), value.size(), 0) != 0 && errno != ENOTSUP) {
    throw Error(errno, path_, std::string("set extended attribute ") + kFenceXattr + " on temp file");
  }
  if (recorded_ && token <= *recorded_) return;
  if (int rc = sys::pwrite_all(fd_.get(), format_record(token, base_), 0); rc < 0) {
    throw Error(-rc, path_, "write fence record " + record_path_);
  }
  if (sync && ::fdatasync(fd_.get()) != 0) throw Error(errno, path_, "fdatasync fence record " + record_path_);
  recorded_ = token;
}

}  // namespace holdfast::durable
