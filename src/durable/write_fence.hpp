// durable/write_fence: the highest fencing token a path has accepted, and the lock that makes
// "check the token, then replace the file" one step against every other fenced writer.
//
// Where the token lives (docs/DURABLE.md, "Fenced writes"):
//   1. An extended attribute, user.holdfast.fence = decimal token, set on the temp file BEFORE the
//      rename: the token is atomic with the content it admitted, and travels with the file.
//   2. A record in the state directory ($HOLDFAST_STATE_DIR, else /var/tmp/holdfast), named after
//      the parent directory's identity (device, inode, birth time) and the file's name, written
//      before the rename. It keeps the fence when the file is replaced by something that is not
//      holdfast (the xattr goes with the old inode), and is the only store where the filesystem
//      has no user xattrs (tmpfs before Linux 6.6, vfat, some FUSE and NFS).
// The highest accepted token is the larger of the two. The record file is also the lock: an OFD
// write lock on it serialises fenced writers of that path, held from the check to after the
// rename, so two writers can never both pass the check against the same old token.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "sys/fd.hpp"

namespace holdfast::durable {

inline constexpr const char* kFenceXattr = "user.holdfast.fence";

class WriteFence {
 public:
  // Takes the fence lock of the file named `base` in the directory `dir`, open at `dirfd` (`path` names
  // it in messages), waiting for another fenced writer of the same path. Creates the record if
  // absent. Throws holdfast::Error: the state directory is unusable (71) or holds a record this
  // user must not trust (77); the record is corrupt or belongs to another name (65).
  static WriteFence lock(int dirfd, const std::string& dir, const std::string& base, const std::string& path);

  // The highest token this path has accepted: max(record, the xattr of the file now at the path).
  // Throws holdfast::Error (65) if the xattr holds something other than a decimal token.
  uint64_t highest() const;

  // Stores `token` as accepted (no-op if not above the record): on the temp file `tmpfd` as the
  // xattr (skipped where the filesystem has no user xattrs) and in the record (fdatasync'ed when
  // `sync`). Call while locked, before the rename. Throws holdfast::Error; then the target must
  // not be replaced.
  void accept(uint64_t token, int tmpfd, bool sync);

  // Where the record lives (for messages and docs).
  const std::string& record_path() const noexcept { return record_path_; }

 private:
  WriteFence(std::string path, std::string target, std::string record_path, sys::UniqueFd fd, std::string base,
             std::optional<uint64_t> recorded);
  std::string path_;         // as the caller named it
  std::string target_;       // dir/base, for reading the current file's xattr
  std::string record_path_;  // the state file
  sys::UniqueFd fd_;         // the state file, OFD-locked while this object lives
  std::string base_;
  std::optional<uint64_t> recorded_;  // the record's token (nullopt: no record yet)
};

// Parses a fencing token: decimal digits only, at most UINT64_MAX. nullopt otherwise.
std::optional<uint64_t> parse_fence_token(const std::string& text);

}  // namespace holdfast::durable
