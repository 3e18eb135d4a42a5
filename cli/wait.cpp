// holdfast wait: wait until the reader's view of a file holds exactly the expected content.
#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"

namespace holdfast::cli {

namespace {
struct WaitArgs {
  std::vector<std::string> paths;
  std::string like;
  std::optional<uint64_t> size;
  std::string digest;
  std::string alg = "xxh128";
  std::string via;
  std::string via_prints = "auto";
  std::vector<std::string> via_map;
  std::string interval = "500ms";
  std::string timeout = "60s";
  std::string on_timeout = "fail";
  bool json = false;
  bool pending = false;
  bool no_inotify = false;
  bool flush = false;
  bool page_cache = false;
  std::vector<std::string> forget;
  bool clear = false;
  std::string journal;
};

std::string seconds(std::chrono::milliseconds d) { return fmt::format("{:.1f}s", static_cast<double>(d.count()) / 1000.0); }

std::chrono::milliseconds to_ms(std::chrono::nanoseconds d) {
  if (d == kNoLimit) return std::chrono::milliseconds::max();
  return std::chrono::duration_cast<std::chrono::milliseconds>(d + std::chrono::microseconds(999));
}

nlohmann::json to_json(const Observation& o) {
  nlohmann::json j{{"matched", o.matched}, {"exists", o.exists}};
  j["size"] = o.size ? nlohmann::json(*o.size) : nlohmann::json(nullptr);
  j["digest"] = o.digest ? nlohmann::json(o.digest->to_string()) : nlohmann::json(nullptr);
  j["differs"] = o.differs;
  j["content_matched"] = o.content_matched;
  j["device"] = o.device;
  return j;
}

void warn_device_unknown(const std::string& path, const Observation& o) {
  if (!o.device_unknown) return;
  (void)std::fprintf(stderr, "holdfast wait: warning: %s: %s\n", path.c_str(), o.device.c_str());
}

std::vector<std::pair<std::string, std::string>> parse_map(const std::vector<std::string>& specs) {
  std::vector<std::pair<std::string, std::string>> map;
  for (const auto& spec : specs) {
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error("", "--via-map " + spec, "not HOST_PREFIX=READER_PREFIX (e.g. /media/u/CIRCUITPY=/)", exit_code::usage);
    }
    map.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  return map;
}
}  // namespace

Run add_wait(CLI::App& root) {
  auto args = std::make_shared<WaitArgs>();
  auto* cmd = root.add_subcommand(
      "wait",
      "Wait until the reader's view of PATH holds exactly the expected content: its size AND the\n"
      "digest of its full content match (size alone is never enough). A local PATH also needs its\n"
      "bytes on the DEVICE, not only in this host's page cache (cachestat(2): no dirty or\n"
      "in-flight page of the file, nor of the block device of a vfat/exfat/ext2 mount); --flush\n"
      "pushes them there once the content matches, --page-cache accepts the page cache (a reader\n"
      "on this host). Event-driven (inotify) on local paths, re-checked every --interval.\n"
      "--via CMD runs `/bin/sh -c CMD sh NAME` where the reader is (NAME = PATH, or PATH mapped by\n"
      "--via-map); its stdout is the content or one digest line (`ALG:HEX`, `HEX  NAME`,\n"
      "`ALG (NAME) = HEX`) — see docs/DURABLE.md. A failing CMD means \"not yet\"; 126/127 on the\n"
      "first run is reported at once.\n"
      "--pending [PATH...] checks the writes recorded by `holdfast write --record` (those under the\n"
      "PATHs if given) and clears those that match; --forget PATH / --clear edit the journal.\n"
      "Exit codes: 0 matched (or timed out with --on-timeout proceed, with a warning), 1 timed out\n"
      "(or the filesystem hung), 64 usage, 65 bad --digest or journal, 66 missing --like source,\n"
      "126/127 the --via command cannot be executed / is not found.");
  cmd->add_option("PATH", args->paths, "File as the host names it (with --pending: filter entries)");
  auto* like = cmd->add_option("--like", args->like, "Expect the content of this source file (size + digest)");
  auto* size = cmd->add_option("--size", args->size, "Expected size in bytes (with --digest)");
  auto* digest = cmd->add_option("--digest", args->digest, "Expected digest ALG:HEX (with --size)");
  cmd->add_option("--alg", args->alg, "Digest algorithm for --like: xxh128 (default) or sha256");
  cmd->add_option("--via", args->via, "Shell command printing the reader's view of $1 (bytes or a digest line)");
  cmd->add_option("--via-prints", args->via_prints, "auto (default), bytes, or digest")
      ->check(CLI::IsMember({"auto", "bytes", "digest"}));
  cmd->add_option("--via-map", args->via_map,
                  "HOST_PREFIX=READER_PREFIX: the reader's name for host paths, e.g. /media/u/CIRCUITPY=/ (repeatable)");
  auto* flush = cmd->add_flag("--flush", args->flush, "Once the content matches, push it to the device (fsync file, directory, block device)");
  auto* page_cache = cmd->add_flag("--page-cache", args->page_cache,
                                   "The reader is a process on this host: matching in the page cache is enough");
  cmd->add_option("--interval", args->interval, "Re-check period (default 500ms)");
  cmd->add_option("--timeout", args->timeout, "Give up after this long (default 60s; inf = never)");
  cmd->add_option("--on-timeout", args->on_timeout, "fail (exit 1, default) or proceed (exit 0 with a warning)")
      ->check(CLI::IsMember({"fail", "proceed"}));
  cmd->add_flag("--json", args->json, "Print the result as JSON on stdout");
  auto* pending = cmd->add_flag("--pending", args->pending, "Wait for every write in the pending-write journal");
  auto* forget = cmd->add_option("--forget", args->forget, "Remove PATH's entry from the journal (repeatable) and exit");
  auto* clear = cmd->add_flag("--clear", args->clear, "Empty the journal and exit");
  cmd->add_option("--journal", args->journal, "Journal file (default $HOLDFAST_JOURNAL, $XDG_STATE_HOME/holdfast/pending.jsonl)");
  cmd->add_flag("--no-inotify", args->no_inotify, "Poll only (for comparison and debugging)");
  pending->excludes(like)->excludes(size)->excludes(digest)->excludes(forget)->excludes(clear);
  like->excludes(size)->excludes(digest);
  flush->excludes(page_cache);
  forget->excludes(clear);

  return [args] {
    std::string journal_arg = args->journal;
    auto journal = [&journal_arg] { return journal_arg.empty() ? default_journal_path() : journal_arg; };
    if (args->clear || !args->forget.empty()) {
      std::string j = journal();
      size_t removed = args->clear ? journal_clear(j) : journal_forget(j, args->forget);
      if (::isatty(STDERR_FILENO) == 1) (void)std::fprintf(stderr, "%zu journal entr%s removed\n", removed, removed == 1 ? "y" : "ies");
      return exit_code::ok;
    }
    WaitOptions opts;
    opts.timeout = to_ms(parse_duration(args->timeout, "--timeout", Infinite::allowed));
    opts.interval = std::max(to_ms(parse_duration(args->interval, "--interval")), std::chrono::milliseconds(1));
    opts.via = args->via;
    opts.via_prints = args->via_prints == "bytes"    ? ViaPrints::bytes
                      : args->via_prints == "digest" ? ViaPrints::digest
                                                     : ViaPrints::automatic;
    opts.via_map = parse_map(args->via_map);
    opts.use_inotify = !args->no_inotify;
    opts.device = args->flush ? DeviceCheck::push : args->page_cache ? DeviceCheck::page_cache : DeviceCheck::wait;
    bool tty = !args->json && ::isatty(STDERR_FILENO) == 1;
    std::string label = args->pending ? std::string("pending writes") : args->paths.empty() ? "" : args->paths.front();
    if (tty) {
      opts.on_check = [&label](const Observation& o, std::chrono::milliseconds elapsed) {
        if (o.matched) return;
        (void)std::fprintf(stderr, "\r\033[Kwaiting for %s: %s, %s", label.c_str(), seconds(elapsed).c_str(), o.differs.c_str());
        (void)std::fflush(stderr);
      };
    }
    auto clear_progress = [tty] {
      if (tty) (void)std::fprintf(stderr, "\r\033[K");
    };
    bool proceed = args->on_timeout == "proceed";

    if (args->pending) {
      std::string j = journal();
      auto r = wait_pending(j, opts, args->paths);
      clear_progress();
      for (const auto& [e, why] : r.dropped) {
        (void)std::fprintf(stderr, "holdfast wait: warning: %s: dropped from %s: %s\n", e.path.c_str(), j.c_str(), why.c_str());
      }
      if (args->json) {
        nlohmann::json out{{"matched", r.all_matched}, {"elapsed_ms", r.elapsed.count()}, {"journal", j}};
        out["cleared"] = nlohmann::json::array();
        for (const auto& e : r.cleared) out["cleared"].push_back({{"path", e.path}, {"size", e.size}, {"digest", e.digest.to_string()}});
        out["dropped"] = nlohmann::json::array();
        for (const auto& [e, why] : r.dropped) out["dropped"].push_back({{"path", e.path}, {"why", why}});
        out["remaining"] = nlohmann::json::array();
        for (const auto& [e, o] : r.remaining) {
          auto oj = to_json(o);
          oj["path"] = e.path;
          oj["expected_size"] = e.size;
          oj["expected_digest"] = e.digest.to_string();
          out["remaining"].push_back(oj);
        }
        (void)std::printf("%s\n", out.dump().c_str());
      } else if (tty) {
        (void)std::fprintf(stderr, "%zu pending write%s confirmed in %s\n", r.cleared.size(), r.cleared.size() == 1 ? "" : "s",
                           seconds(r.elapsed).c_str());
      }
      if (r.all_matched) return exit_code::ok;
      std::string what = fmt::format("{} of {} pending writes still differ after {}", r.remaining.size(),
                                     r.remaining.size() + r.cleared.size(), seconds(r.elapsed));
      for (const auto& [e, o] : r.remaining) what += fmt::format("; {}: {}", e.path, o.differs);
      if (proceed) {
        (void)std::fprintf(stderr, "holdfast wait: warning: %s: timed out: %s; proceeding\n", j.c_str(), what.c_str());
        return exit_code::ok;
      }
      throw Error(j, "timed out", what, exit_code::conflict);
    }

    if (args->paths.size() != 1) throw Error("", "wait", "exactly one PATH is required (or --pending)", exit_code::usage);
    const std::string& path = args->paths.front();
    auto alg = parse_digest_alg(args->alg);
    if (!alg) throw Error("", "--alg " + args->alg, "unknown algorithm (xxh128, sha256)", exit_code::usage);
    Expected expected;
    if (!args->like.empty()) {
      // With --via the reader may print either algorithm; knowing both costs one extra hash.
      std::vector<DigestAlg> algs{*alg};
      if (!args->via.empty()) algs.push_back(*alg == DigestAlg::sha256 ? DigestAlg::xxh128 : DigestAlg::sha256);
      expected = expected_from_file(args->like, algs);
    } else if (args->size && !args->digest.empty()) {
      auto d = Digest::parse(args->digest);
      if (!d) throw Error("", "--digest " + args->digest, "not ALG:HEX (e.g. sha256:<64 hex>)", exit_code::data);
      expected = Expected{*args->size, {*d}};
    } else {
      throw Error(path, "wait", "give --like SRC, or both --size N and --digest ALG:HEX", exit_code::usage);
    }

    auto r = wait_for_content(path, expected, opts);
    clear_progress();
    warn_device_unknown(path, r.last);
    if (args->json) {
      auto j = to_json(r.last);
      j["path"] = path;
      j["matched"] = r.matched;
      j["elapsed_ms"] = r.elapsed.count();
      j["checks"] = r.checks;
      j["inotify"] = r.used_inotify;
      j["hung"] = r.hung;
      j["expected_size"] = expected.size;
      j["expected_digest"] = expected.digests.front().to_string();
      (void)std::printf("%s\n", j.dump().c_str());
    } else if (tty && r.matched) {
      (void)std::fprintf(stderr, "%s: matched after %s\n", path.c_str(), seconds(r.elapsed).c_str());
    }
    if (r.matched) return exit_code::ok;
    std::string what = fmt::format("timed out after {}: {}", seconds(r.elapsed), r.last.differs);
    if (proceed) {
      (void)std::fprintf(stderr, "holdfast wait: warning: %s: %s; proceeding\n", path.c_str(), what.c_str());
      return exit_code::ok;
    }
    throw Error(path, "wait", what, exit_code::conflict);
  };
}

}  // namespace holdfast::cli
