// holdfast::atomic_write — replace a file so that every reader, and every crash, sees either the
// complete old content or the complete new content, and (unless sync is off) the new content is
// on stable storage before the call returns.
//
// An existing target keeps its mode, owner and group, POSIX ACLs and every extended attribute the
// caller can read (user.*, security.selinux, security.capability; trusted.* as root): they are
// copied to the temp file before the rename. If any of them cannot be kept, open() throws (exit
// 77) and the target is untouched — a replace never loosens, tightens or re-owns a file.
//
// Protocol: a temp file in the target's directory (O_TMPFILE, made visible with linkat right
// before the rename; else an O_CREAT|O_EXCL file named ".BASE.holdfast-tmp.HEX16"), write, fsync
// the temp file, renameat over the target relative to an O_DIRECTORY descriptor of the parent,
// fsync that directory. The name of a temp file left by a crash always starts with "." and
// contains ".holdfast-tmp." — it is never the target and never mistaken for it.
//
// An fsync failure is fatal: it is reported and never retried (after a failed fsync the kernel
// may have dropped the dirty pages, so a retry can "succeed" without the data).
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "holdfast/digest.hpp"

namespace holdfast {

struct WriteOptions {
  // fsync the data and the directory. false = atomic only (readers and a process crash see old or
  // new; a power loss may lose the new content).
  bool sync = true;
  // The mode of a NEW file, exactly (umask is not applied); without it, 0666 & ~umask. An
  // existing target always keeps its mode, so a caller that passes a mode for new files never
  // loosens (or tightens) a file someone already set up, e.g. a 0600 secret.
  std::optional<mode_t> mode;
  // Append (path, size, digest, time) to the pending-write journal after a successful commit, so
  // `holdfast wait --pending` can later confirm the reader sees it (see wait.hpp).
  bool record = false;
  std::string journal;  // journal file for `record`; empty = default_journal_path()
  DigestAlg record_alg = DigestAlg::xxh128;
  // Guards for producers that can fail without the writer noticing (a pipeline without
  // pipefail): commit() refuses (exit 65, target untouched) unless exactly this many bytes, with
  // this digest, were written.
  std::optional<uint64_t> expect_size;
  std::optional<Digest> expect_digest;
  // Fencing (docs/DURABLE.md, "Fenced writes"): commit() replaces the target only if this token
  // is >= the highest token the path has accepted, else throws (exit 79, exit_code::fenced,
  // target untouched). An equal token is accepted (the same holder writing twice). The check and
  // the rename happen under one lock shared by every fenced writer of the path, so of two racing
  // writers the lower token can never land after the higher one. The accepted token is stored in
  // the file's user.holdfast.fence xattr (atomic with the content) and in a record in the state
  // directory ($HOLDFAST_STATE_DIR, else /var/tmp/holdfast); the highest is the larger of the two.
  std::optional<uint64_t> fence;
};

// The temp-name marker: a file in a directory whose name starts with '.' and contains this is an
// abandoned or in-flight holdfast temp file, never data.
inline constexpr std::string_view kTempMarker = ".holdfast-tmp.";

// A streaming atomic replace: open, write chunks, then commit() or abort(). Large inputs are never
// buffered whole.
class AtomicWriter {
 public:
  // Prepares to replace `path`. Throws holdfast::Error (target untouched) if the parent directory
  // is missing (exit 66), not writable (77), read-only (73); if `path` is a directory (73); or if
  // it is a symlink in a sticky world-writable directory (77); if the existing target's owner,
  // mode, ACLs or extended attributes cannot be given to the new file (77). A symlink elsewhere is followed:
  // the file it points to is replaced, the link stays.
  static AtomicWriter open(const std::string& path, const WriteOptions& options = {});

  AtomicWriter(AtomicWriter&&) noexcept;
  AtomicWriter& operator=(AtomicWriter&&) noexcept;
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;
  // Aborts if neither commit() nor abort() was called.
  ~AtomicWriter();

  // Appends `chunk` to the new content. Throws holdfast::Error (EIO/ENOSPC -> exit 74) after
  // removing the temp file; the writer is then aborted and the target untouched.
  void write(std::string_view chunk);

  // Makes the new content the target's. If commit returns normally, `path` names a file with
  // exactly the bytes written and, if options.sync, both the data and the directory entry are on
  // stable storage. If it throws before the rename, the target is untouched and the temp file is
  // gone; this includes an expect_size / expect_digest mismatch (exit 65). If the directory fsync
  // fails after the rename, it throws (exit 74) saying so: the target then holds the new content
  // but its durability is unknown. If recording in the journal fails after the rename, it throws
  // (exit 75) "PATH: replaced; not recorded in JOURNAL: cause".
  void commit();

  // Discards the new content and removes the temp file. The target is untouched. Never throws.
  void abort() noexcept;

  // The file that will be replaced (after following a symlink).
  const std::string& target() const noexcept;
  uint64_t bytes_written() const noexcept;

  struct State;  // implementation detail

 private:
  explicit AtomicWriter(std::unique_ptr<State> state) noexcept;
  std::unique_ptr<State> state_;
};

// One-shot form: if it returns normally, `path` holds exactly `data` (durably unless
// options.sync is false). On any exception the target is untouched and no temp file is left.
void atomic_write(const std::string& path, std::string_view data, const WriteOptions& options = {});

// The highest fencing token `path` has accepted (see WriteOptions::fence), 0 if none. Waits for a
// fenced write of the same path in progress. Throws holdfast::Error as a fenced commit() would
// (corrupt record or xattr: 65; unusable state directory: 71; untrusted record: 77).
uint64_t accepted_fence(const std::string& path);

// ---- flushing what someone else wrote ----

// fsyncs `path` (a file or a directory), then its parent directory, then — on filesystems whose
// metadata lives in the block device's own cache without a journal (vfat, exfat, ext2; where the
// device can be opened) — that block device. If it returns normally, the content of `path` and
// its directory entry are on stable storage, and `wait` sees them there. Throws holdfast::Error
// (missing -> 66, EACCES -> 77, EIO/failed fsync -> 74); an fsync error is never retried.
void sync_path(const std::string& path);

// syncfs(2) on the filesystem holding `path`: every dirty page of that filesystem is written.
// Throws holdfast::Error as sync_path.
void sync_filesystem(const std::string& path);

}  // namespace holdfast
