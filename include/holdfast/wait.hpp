// holdfast::wait_for_content — the flush detector: wait until the *reader's view* of a file holds
// exactly the expected bytes (size AND digest of the full content; size alone is never enough),
// and the pending-write journal that lets a tool gate "now tell the reader" on every recent write.
//
// The view is the local path (event-driven with inotify on the parent directory, and always
// re-checked every `interval` too, because FUSE and network filesystems may not report events) or
// the output of a shell command (`via`) run where the reader is — see docs/DURABLE.md for the
// protocol.
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
};

struct WaitOptions {
  std::chrono::milliseconds timeout{60000};
  // Re-check at least this often, even when inotify is in use.
  std::chrono::milliseconds interval{500};
  // Empty: observe the local path. Else a /bin/sh command whose stdout is the reader's view; it
  // gets the path as $1 and in $HOLDFAST_PATH. A non-zero exit is "not yet" (reader unavailable).
  std::string via;
  ViaPrints via_prints = ViaPrints::automatic;
  bool use_inotify = true;  // false: pure polling (benchmarks, debugging)
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
};

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
  int64_t time_unix_ns = 0;
  friend bool operator==(const PendingWrite&, const PendingWrite&) = default;
};

// $HOLDFAST_JOURNAL; else $XDG_STATE_HOME/holdfast/pending.jsonl; else
// $HOME/.local/state/holdfast/pending.jsonl; else (root without HOME) /var/lib/holdfast/pending.jsonl.
// Throws holdfast::Error(usage) when none applies.
std::string default_journal_path();

// Records `write`, replacing any earlier entry for the same path (a file holds one content, so an
// older entry could never match again). Safe under concurrent callers: updates happen under
// flock(2) of "JOURNAL.lock" and the journal is replaced with atomic_write. Creates the directory.
void journal_record(const std::string& journal, const PendingWrite& write);

// The entries, oldest first. Missing journal = none. Malformed lines are skipped.
std::vector<PendingWrite> journal_read(const std::string& journal);

// Removes exactly the entries in `done` (under the lock); entries recorded meanwhile stay.
void journal_remove(const std::string& journal, const std::vector<PendingWrite>& done);

struct PendingResult {
  bool all_matched = false;
  std::vector<PendingWrite> cleared;  // matched and removed from the journal
  std::vector<std::pair<PendingWrite, Observation>> remaining;  // still differ at the end
  std::chrono::milliseconds elapsed{0};
};

// Waits until every entry in `journal` matches in the reader's view (options.via applies to each,
// with the entry's path as $1), clearing each from the journal as soon as it matches. Returns at
// timeout with the rest in `remaining`.
PendingResult wait_pending(const std::string& journal, const WaitOptions& options);

}  // namespace holdfast
