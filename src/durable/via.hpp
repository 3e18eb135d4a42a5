// Running a `--via` command: the reader's view of a path, produced where the reader is.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "holdfast/digest.hpp"

namespace holdfast::durable {

struct ViaOutput {
  int status = -1;                // exit status, 128+signal, or -1 if it could not run / timed out
  bool timed_out = false;
  uint64_t size = 0;              // bytes printed on stdout
  std::vector<Digest> digests;    // of stdout, one per requested algorithm
  std::string head;               // stdout, if it is at most kHeadLimit bytes (for digest lines)
  std::string err_line;           // first line of stderr, for messages
  static constexpr size_t kHeadLimit = 4096;
};

// Runs `/bin/sh -c command sh reader_path` (with $HOLDFAST_PATH=reader_path and
// $HOLDFAST_HOST_PATH=host_path), started with sys::spawn in its own process group, streaming its
// stdout through the hashers. The result is taken when the shell EXITS (its pidfd), not when its
// pipes close, plus up to 100 ms for output still in flight. Then — or at `deadline`, which sets
// timed_out — everything the command left behind is SIGKILLed: its process group, and every
// process carrying the run's $HOLDFAST_VIA_RUN marker in its environment (descendants that
// called setsid: a background `ssh -f`, a ControlPersist master). A command that cannot be
// started gives status 126/127 and the reason in err_line.
ViaOutput run_via(const std::string& command, const std::string& reader_path, const std::string& host_path,
                  const std::vector<DigestAlg>& algs, std::chrono::steady_clock::time_point deadline);

// A digest line in the `--via` protocol: "ALG:HEX", "ALG:HEX SIZE", "HEX  NAME", "HEX *NAME",
// "HEX" (HEX of 32 or 64 hex digits -> xxh128 or sha256). Trailing newline allowed; exactly one line.
struct DigestLine {
  Digest digest;
  std::optional<uint64_t> size;
  bool bare_hex = false;  // no ALG: prefix; the algorithm was inferred from the length
};
std::optional<DigestLine> parse_digest_line(std::string_view text);

}  // namespace holdfast::durable
