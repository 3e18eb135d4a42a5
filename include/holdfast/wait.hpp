// holdfast::wait_for_content — the flush detector: wait until the *reader's view* of a file holds
// exactly the expected bytes (size AND digest of the full content; size alone is never enough),
// and the pending-write journal that lets a tool gate "now tell the reader" on every recent write.
//
// The view is the local path (event-driven with inotify on the parent directory, and always
// re-checked every `interval` too, because FUSE and network filesystems may not report events) or
// the output of a shell command (`via`) run where the reader is — see docs/DURABLE.md for the
// protocol.
//
// A local path is matched only when its content matches AND the bytes have reached the device
// (the host-side flush detector, src/durable/flush.hpp): the page cache this host reads is not
// what a reader of the device (a USB board, a VM, a raw image) sees. Every local observation runs
// on a helper thread that is abandoned at the deadline, so a hung filesystem cannot hold a wait
// past its timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/digest.hpp"

namespace holdfast {

// What the reader should see.
struct Expected {
  uint64_t size = 0;
  std::vector<Digest> digests;  // at least one; a --via digest is compared with the one of its alg

  // The digest of algorithm `alg`, if known.
  const Digest* find(DigestAlg alg) const noexcept;
};

// Size and digests (one per algorithm in `algs`) of the file at `path` as it is now. Throws
// holdfast::Error if it cannot be read.
Expected expected_from_file(const std::string& path, const std::vector<DigestAlg>& algs);

// How to interpret the output of a `via` command.
enum class ViaPrints {
  automatic,  // one line "ALG:HEX[ ...]" or "HEX  NAME" (sha256sum style) is a digest; else bytes
  bytes,      // the output is the content
  digest,     // the output must be a digest line; anything else is an error for that check
};

// One look at the reader's view.
struct Observation {
  bool matched = false;
  bool exists = false;               // the file (or the via command's output) was observed
  std::optional<uint64_t> size;      // observed size, when known (not known for a via digest)
  std::optional<Digest> digest;      // observed digest, when computed
  std::string differs;               // one line: what still differs (empty when matched)
  // Local paths: the content matched in this host's page cache (matched additionally needs the
  // device), and what the flush detector said about the device ("" when not checked).
  bool content_matched = false;
  bool device_pending = false;  // content matched, bytes not on the device yet
  bool device_unknown = false;  // matched, but whether the bytes reached the device is unknown
  std::string device;
};

// When a local path counts as matched.
enum class DeviceCheck {
  wait,        // content matches AND its bytes have reached the device (default)
  push,        // as wait, but push them there (fsync file, directory, block device) once it matches
  page_cache,  // content matches in this host's page cache: the reader is a process on this host
};

struct WaitOptions {
  // milliseconds::max() = no deadline.
  std::chrono::milliseconds timeout{60000};
  // Re-check at least this often, even when inotify is in use.
  std::chrono::milliseconds interval{500};
  // Empty: observe the local path. Else a /bin/sh command whose stdout is the reader's view; it
  // gets the path as $1 and in $HOLDFAST_PATH. A non-zero exit is "not yet" (reader unavailable).
  std::string via;
  ViaPrints via_prints = ViaPrints::automatic;
  bool use_inotify = true;  // false: pure polling (benchmarks, debugging)
  DeviceCheck device = DeviceCheck::wait;
  // The reader's name for a host path: the first (HOST_PREFIX, READER_PREFIX) pair whose
  // HOST_PREFIX is PATH or a leading directory of it replaces that prefix; that name is the via
  // command's $1 (the host path stays in $HOLDFAST_HOST_PATH). E.g. {"/media/u/CIRCUITPY", "/"}.
  std::vector<std::pair<std::string, std::string>> via_map;
  // Called after every check (for a progress line).
  std::function<void(const Observation&, std::chrono::milliseconds elapsed)> on_check;
};

// Checks once. Never throws for an absent/unreadable file or a failing via command: those are
// observations ("missing", "unreadable: EACCES", "via command exited 255: ...").
Observation observe(const std::string& path, const Expected& expected, const WaitOptions& options);

struct WaitResult {
  bool matched = false;
  Observation last;
  std::chrono::milliseconds elapsed{0};
  unsigned checks = 0;
  bool used_inotify = false;
  bool hung = false;  // the last local observation did not return before the deadline; `last` is
                      // then the latest check that did return (its `differs` says so), if any
};

// `path` as the reader names it under `map` (see WaitOptions::via_map); unchanged if no prefix
// applies.
std::string reader_name(const std::string& path, const std::vector<std::pair<std::string, std::string>>& map);

// Waits until observe() matches or options.timeout passes. If it returns with matched == true,
// the reader's view held exactly `expected` at the last check. Does not throw on timeout; the
// caller decides (the command's --on-timeout). Throws holdfast::Error only for setup failures.
WaitResult wait_for_content(const std::string& path, const Expected& expected, const WaitOptions& options);

// ---- pending-write journal ----

// One recorded write.
struct PendingWrite {
  std::string path;  // absolute
  uint64_t size = 0;
  Digest digest;
  int64_t time_unix_ns = 0;  // when it was recorded (after the rename)
  // The written file's inode and mtime (0: not recorded, as in journals of earlier versions).
  uint64_t ino = 0;
  int64_t mtime_ns = 0;
  friend bool operator==(const PendingWrite&, const PendingWrite&) = default;
};

// $HOLDFAST_JOURNAL; else $XDG_STATE_HOME/holdfast/pending.jsonl; else
// $HOME/.local/state/holdfast/pending.jsonl; else (root without HOME) /var/lib/holdfast/pending.jsonl.
// Throws holdfast::Error(usage) when none applies.
std::string default_journal_path();

// Bounds of the journal. Recording beyond kJournalMaxEntries fails (exit 75) and names the cure
// (`wait --pending`, `--forget`, `--clear`) instead of dropping entries.
inline constexpr size_t kJournalMaxEntries = 10000;
inline constexpr size_t kJournalMaxBytes = size_t{64} << 20;

// Records `write`, replacing any earlier entry for the same path (a file holds one content, so an
// older entry could never match again). Safe under concurrent callers: updates happen under
// flock(2) of "JOURNAL.lock" and the journal is replaced with atomic_write. Creates the directory.
void journal_record(const std::string& journal, const PendingWrite& write);

// The entries, oldest first. Missing journal = none. Malformed lines are skipped. A journal larger
// than kJournalMaxBytes is never truncated: it throws holdfast::Error (exit 65) instead.
std::vector<PendingWrite> journal_read(const std::string& journal);

// Removes exactly the entries in `done` (under the lock); entries recorded meanwhile stay.
void journal_remove(const std::string& journal, const std::vector<PendingWrite>& done);

// Removes the entries for `paths` (absolute, or made absolute against the working directory).
// Returns how many were removed.
size_t journal_forget(const std::string& journal, const std::vector<std::string>& paths);
// Removes every entry. Returns how many there were.
size_t journal_clear(const std::string& journal);

struct PendingResult {
  bool all_matched = false;
  std::vector<PendingWrite> cleared;  // matched and removed from the journal
  std::vector<std::pair<PendingWrite, Observation>> remaining;  // still differ at the end
  // Removed without matching, with why: the host file is gone, or was replaced after the
  // recorded write (it can never match again).
  std::vector<std::pair<PendingWrite, std::string>> dropped;
  std::chrono::milliseconds elapsed{0};
};

// Waits until every entry in `journal` matches in the reader's view (options.via applies to each,
// with the entry's path as $1), clearing each from the journal as soon as it matches. Returns at
// timeout with the rest in `remaining`.
PendingResult wait_pending(const std::string& journal, const WaitOptions& options);
// As above for the entries whose path is one of `only` or lies under one of them (all if empty).
PendingResult wait_pending(const std::string& journal, const WaitOptions& options, const std::vector<std::string>& only);

// Why the recorded write `entry` can never be confirmed any more ("" if it still can): its host
// file is missing, or it was modified after the record and no longer has the recorded content.
// A file whose inode, size and mtime are still those recorded is not read. Any other is read and
// compared: a file's timestamps come from a clock coarser than the record's time, so an edit
// right after the write can carry an mtime older than the record.
std::string pending_obsolete(const PendingWrite& entry);

}  // namespace holdfast
