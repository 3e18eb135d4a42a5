// Fencing tokens: 64-bit, strictly increasing per lock path across holders, crashes and reboots,
// with one fsync per boot (not per acquisition).
//
// token = epoch << 32 | counter. The epoch lives in a sidecar file PATH.fence and is bumped
// durably (pwrite + fdatasync, plus fsync of the directory when the file is new) the first time a
// lock is granted in a boot on a host, or when the counter state is lost. Within one boot the
// counter is updated without fsync: the page cache is coherent for every process on the machine,
// and a crash starts a new boot, whose first grant bumps the epoch past every token handed out
// before. A new epoch is max(previous + 1, unix seconds), so even a deleted fence file restarts
// above the tokens of any earlier day.
//
// File layout (text, fixed offsets so in-place writes never move each other):
//   [0, 96)   "E <epoch:16 hex> <boot id> <host hash:16 hex>" padded, '\n' at 95 — durable part
//   [96, 128) "C <epoch:16 hex> <counter:8 hex>" padded, '\n' at 127   — per-grant part
#pragma once

#include <cstdint>
#include <string>

#include "sys/fd.hpp"

namespace holdfast::fence {

std::string sidecar_path(const std::string& lock_path);

// An open fence file. Callers must hold the lock they fence (exclusively for next()).
class FenceFile {
 public:
  // Opens (creating if needed) the fence file for `lock_path`, with `open_flags` added (e.g.
  // O_NOFOLLOW). Throws holdfast::Error.
  static FenceFile open(const std::string& lock_path, int extra_open_flags);

  // Issues the next token. Must be called while holding the lock exclusively. Throws on I/O errors
  // (a failed fdatasync of an epoch bump is fatal) or a corrupt epoch region.
  uint64_t next();

  // The last token issued (0 if none yet); for shared holders.
  uint64_t current() const;

 private:
  FenceFile(std::string path, sys::UniqueFd fd, bool created)
      : path_(std::move(path)), fd_(std::move(fd)), created_(created) {}
  std::string path_;
  sys::UniqueFd fd_;
  bool created_;
};

}  // namespace holdfast::fence
