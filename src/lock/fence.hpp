// Fencing tokens: 64-bit, strictly increasing per lock path across holders, crashes and reboots,
// with one fsync per boot (not per acquisition).
//
// token = epoch << 32 | counter. The epoch lives in a fence file (a dotlock's PATH.fence, or a
// kernel lock's file in the state directory, see internal.hpp) and is bumped
// durably (pwrite + fdatasync, plus fsync of the directory when the file is new) the first time a
// lock is granted in a boot on a host, or when the counter state is lost. Within one boot the
// counter is updated without fsync: the page cache is coherent for every process on the machine,
// and a crash starts a new boot, whose first grant bumps the epoch past every token handed out
// before. A new epoch is max(previous + 1, unix seconds), so even a deleted fence file restarts
// above the tokens of any earlier day.
//
// Network and userspace filesystems (sys::on_network_filesystem: NFS, SMB, 9p, FUSE, ...) break
// both premises: a server can lose an unsynced counter write without this machine rebooting
// (rolling the counter back under the same boot id), and another client's cache is not ours.
// There the counter write is fdatasync'ed on every grant, and the file is reopened on every
// grant (close-to-open revalidation), at the cost of a server round trip or two per grant.
//
// File layout (text, fixed offsets so in-place writes never move each other):
//   [0, 96)   "E <epoch:16 hex> <boot id> <host hash:16 hex>" padded, '\n' at 95 — durable part
//   [96, 128) "C <epoch:16 hex> <counter:8 hex>" padded, '\n' at 127   — per-grant part
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "sys/fd.hpp"
#include "sys/mapping.hpp"

namespace holdfast::fence {

// A dotlock's fence file: PATH.fence, beside the dotlock (all of a dotlock's files are
// holdfast's own, and every host sharing the directory must share the counter).
std::string sidecar_path(const std::string& lock_path);

// An open fence file. Callers must hold the lock they fence (exclusively for next()).
class FenceFile {
 public:
  // Opens `path` for reading and writing; sets `created` if this call created it. Returns the fd
  // or -errno.
  using Opener = std::function<int(bool& created)>;

  // Opens (creating if needed, mode 0644) the fence file at `path`, with `extra_open_flags`
  // added (e.g. O_NOFOLLOW). Throws holdfast::Error.
  static FenceFile open(const std::string& path, int extra_open_flags);
  // Opens the fence file at `path` through `opener` (which applies its own trust checks).
  // Throws holdfast::Error naming `path` if it fails.
  static FenceFile open_with(const std::string& path, Opener opener);
  // Wraps `fd`, already opened by `opener` (which set `created`). Throws if it is not a regular file.
  // `st`, when given, is fd's fstat, already taken.
  static FenceFile adopt(const std::string& path, Opener opener, sys::UniqueFd fd, bool created,
                         const struct stat* st = nullptr);

  // Issues the next token. Must be called while holding the lock exclusively. If the file at
  // the path was replaced or removed since it was opened, reopens it first, so a long-lived
  // handle never issues from a stale inode. Throws on I/O errors (a failed fdatasync of an epoch
  // bump is fatal) or a corrupt epoch region.
  uint64_t next();

  // The last token issued (0 if none yet); for shared holders.
  uint64_t current();

  // Whether the file is on a local filesystem (where a shared mapping is coherent).
  bool local() const noexcept { return !network_; }

  // For a fence file kept open across many grants (a LockFile): on a local filesystem, read and
  // bump the counter through a shared mapping from now on (and after a reopen). A one-shot
  // grant does not: mapping and unmapping cost more than the pread and pwrite they save.
  void keep_mapped();

 private:
  FenceFile(std::string path, Opener opener, sys::UniqueFd fd, bool created, const struct stat& opened);
  void reopen_if_replaced();
  void reopen();
  std::string path_;
  Opener opener_;
  sys::UniqueFd fd_;
  struct stat opened_;  // fd_'s inode when opened: the path must still name it
  bool created_;
  bool network_;  // on a network or userspace filesystem (or unknown): sync and reopen per grant
  // Local filesystems: the file's first 128 bytes mapped shared, so a grant reads and bumps the
  // counter with loads and stores on the page cache instead of pread + pwrite. Used only while
  // the last stat showed the whole layout present (no access beyond the end of the file).
  sys::SharedMapping map_;
  bool want_map_ = false;  // keep_mapped() was called
  off_t known_size_ = 0;  // st_size at the last check of the path
  void map_if_local();
  // The epoch line last read that was valid and of this boot and host, and its epoch.
  bool epoch_cache_valid_ = false;
  char epoch_cache_[96] = {};
  uint64_t cached_epoch_ = 0;
  // The counter line's first bytes while the epoch is cached_epoch_: "C <epoch:16 hex> ". A
  // grant compares them and parses only the counter's 8 digits, and writes them back as they are.
  char counter_prefix_[19] = {};
};

}  // namespace holdfast::fence
