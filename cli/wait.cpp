// holdfast wait: wait until the reader's view of a file holds exactly the expected content.
#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"

namespace holdfast::cli {

namespace {
struct WaitArgs {
  std::string path;
  std::string like;
  std::optional<uint64_t> size;
  std::string digest;
  std::string alg = "xxh128";
  std::string via;
  std::string via_prints = "auto";
  std::string interval = "500ms";
  std::string timeout = "60s";
  std::string on_timeout = "fail";
  bool json = false;
  bool pending = false;
  bool no_inotify = false;
  std::string journal;
};

// "500ms", "2s", "1.5s", "1m"; a bare number is seconds.
std::chrono::milliseconds parse_duration(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  double scale = unit.empty() || unit == "s" ? 1000.0 : unit == "ms" ? 1.0 : unit == "m" ? 60000.0 : -1.0;
  if (used == 0 || v < 0 || scale < 0) {
    throw Error("", flag + " " + text, "not a duration (e.g. 500ms, 2s, 1.5m; bare number = seconds)", exit_code::usage);
  }
  return std::chrono::milliseconds(static_cast<int64_t>(v * scale));
}

std::string seconds(std::chrono::milliseconds d) { return fmt::format("{:.1f}s", static_cast<double>(d.count()) / 1000.0); }

nlohmann::json to_json(const Observation& o) {
  nlohmann::json j{{"matched", o.matched}, {"exists", o.exists}};
  j["size"] = o.size ? nlohmann::json(*o.size) : nlohmann::json(nullptr);
  j["digest"] = o.digest ? nlohmann::json(o.digest->to_string()) : nlohmann::json(nullptr);
  j["differs"] = o.differs;
  return j;
}
}  // namespace

Run add_wait(CLI::App& root) {
  auto args = std::make_shared<WaitArgs>();
  auto* cmd = root.add_subcommand(
      "wait",
      "Wait until the reader's view of PATH holds exactly the expected content: its size AND the\n"
      "digest of its full content match (size alone is never enough). Event-driven (inotify) on\n"
      "local paths, and re-checked every --interval (FUSE/network filesystems, --via).\n"
      "--via CMD runs `/bin/sh -c CMD sh PATH` ($1 and $HOLDFAST_PATH are PATH) where the reader is;\n"
      "its stdout is the content, or one digest line (`ALG:HEX`, `ALG:HEX SIZE`, `HEX  NAME`) —\n"
      "see --via-prints and docs/DURABLE.md. A failing CMD means \"not yet\".\n"
      "--pending checks every write recorded by `holdfast write --record` and clears those that match.\n"
      "Exit codes: 0 matched (or timed out with --on-timeout proceed, with a warning), 1 timed out,\n"
      "64 usage, 66 missing --like source, 65 bad --digest.");
  auto* path = cmd->add_option("PATH", args->path, "File as the reader sees it");
  auto* like = cmd->add_option("--like", args->like, "Expect the content of this source file (size + digest)");
  auto* size = cmd->add_option("--size", args->size, "Expected size in bytes (with --digest)");
  auto* digest = cmd->add_option("--digest", args->digest, "Expected digest ALG:HEX (with --size)");
  cmd->add_option("--alg", args->alg, "Digest algorithm for --like: xxh128 (default) or sha256");
  cmd->add_option("--via", args->via, "Shell command printing the reader's view of $1 (bytes or a digest line)");
  cmd->add_option("--via-prints", args->via_prints, "auto (default), bytes, or digest")
      ->check(CLI::IsMember({"auto", "bytes", "digest"}));
  cmd->add_option("--interval", args->interval, "Re-check period (default 500ms)");
  cmd->add_option("--timeout", args->timeout, "Give up after this long (default 60s)");
  cmd->add_option("--on-timeout", args->on_timeout, "fail (exit 1, default) or proceed (exit 0 with a warning)")
      ->check(CLI::IsMember({"fail", "proceed"}));
  cmd->add_flag("--json", args->json, "Print the result as JSON on stdout");
  auto* pending = cmd->add_flag("--pending", args->pending, "Wait for every write in the pending-write journal");
  cmd->add_option("--journal", args->journal, "Journal file (default $HOLDFAST_JOURNAL, $XDG_STATE_HOME/holdfast/pending.jsonl)");
  cmd->add_flag("--no-inotify", args->no_inotify, "Poll only (for comparison and debugging)");
  pending->excludes(path)->excludes(like)->excludes(size)->excludes(digest);
  like->excludes(size)->excludes(digest);

  return [args] {
    WaitOptions opts;
    opts.timeout = parse_duration(args->timeout, "--timeout");
    opts.interval = std::max(parse_duration(args->interval, "--interval"), std::chrono::milliseconds(1));
    opts.via = args->via;
    opts.via_prints = args->via_prints == "bytes"    ? ViaPrints::bytes
                      : args->via_prints == "digest" ? ViaPrints::digest
                                                     : ViaPrints::automatic;
    opts.use_inotify = !args->no_inotify;
    bool tty = !args->json && ::isatty(STDERR_FILENO) == 1;
    std::string label = args->pending ? std::string("pending writes") : args->path;
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
      std::string journal = args->journal.empty() ? default_journal_path() : args->journal;
      auto r = wait_pending(journal, opts);
      clear_progress();
      if (args->json) {
        nlohmann::json j{{"matched", r.all_matched}, {"elapsed_ms", r.elapsed.count()}, {"journal", journal}};
        j["cleared"] = nlohmann::json::array();
        for (const auto& e : r.cleared) j["cleared"].push_back({{"path", e.path}, {"size", e.size}, {"digest", e.digest.to_string()}});
        j["remaining"] = nlohmann::json::array();
        for (const auto& [e, o] : r.remaining) {
          auto oj = to_json(o);
          oj["path"] = e.path;
          oj["expected_size"] = e.size;
          oj["expected_digest"] = e.digest.to_string();
          j["remaining"].push_back(oj);
        }
        (void)std::printf("%s\n", j.dump().c_str());
      } else if (tty) {
        (void)std::fprintf(stderr, "%zu pending write%s confirmed in %s\n", r.cleared.size(), r.cleared.size() == 1 ? "" : "s",
                     seconds(r.elapsed).c_str());
      }
      if (r.all_matched) return exit_code::ok;
      std::string what = fmt::format("{} of {} pending writes still differ after {}", r.remaining.size(),
                                     r.remaining.size() + r.cleared.size(), seconds(r.elapsed));
      for (const auto& [e, o] : r.remaining) what += fmt::format("; {}: {}", e.path, o.differs);
      if (proceed) {
        (void)std::fprintf(stderr, "holdfast wait: warning: %s: timed out: %s; proceeding\n", journal.c_str(), what.c_str());
        return exit_code::ok;
      }
      throw Error(journal, "timed out", what, exit_code::conflict);
    }

    if (args->path.empty()) throw Error("", "wait", "PATH is required (or --pending)", exit_code::usage);
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
      throw Error(args->path, "wait", "give --like SRC, or both --size N and --digest ALG:HEX", exit_code::usage);
    }

    auto r = wait_for_content(args->path, expected, opts);
    clear_progress();
    if (args->json) {
      auto j = to_json(r.last);
      j["path"] = args->path;
      j["matched"] = r.matched;
      j["elapsed_ms"] = r.elapsed.count();
      j["checks"] = r.checks;
      j["inotify"] = r.used_inotify;
      j["expected_size"] = expected.size;
      j["expected_digest"] = expected.digests.front().to_string();
      (void)std::printf("%s\n", j.dump().c_str());
    } else if (tty && r.matched) {
      (void)std::fprintf(stderr, "%s: matched after %s\n", args->path.c_str(), seconds(r.elapsed).c_str());
    }
    if (r.matched) return exit_code::ok;
    std::string what = fmt::format("timed out after {}: {}", seconds(r.elapsed), r.last.differs);
    if (proceed) {
      (void)std::fprintf(stderr, "holdfast wait: warning: %s: %s; proceeding\n", args->path.c_str(), what.c_str());
      return exit_code::ok;
    }
    throw Error(args->path, "wait", what, exit_code::conflict);
  };
}

}  // namespace holdfast::cli
