// holdfast digest: print content digests (sha256sum-style), or check a list of them.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "commands.hpp"
#include "holdfast/digest.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct DigestArgs {
  std::vector<std::string> paths;
  std::string alg = "xxh128";
  std::string check;
  bool tag = false;
  bool prefixed = false;
};

// One checklist line: "HEX  PATH", "HEX *PATH" or "ALG:HEX  PATH".
struct CheckLine {
  Digest digest;
  std::string path;
};

std::optional<CheckLine> parse_check_line(std::string line, std::optional<DigestAlg> forced) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (auto tagged = parse_tagged_line(line)) return CheckLine{tagged->digest, tagged->name};
  auto sp = line.find(' ');
  if (sp == std::string::npos || sp + 2 > line.size()) return std::nullopt;
  std::string first = line.substr(0, sp);
  char mode = line[sp + 1];
  if (mode != ' ' && mode != '*') return std::nullopt;
  std::string path = line.substr(sp + 2);
  if (path.empty()) return std::nullopt;
  std::optional<Digest> d;
  if (first.find(':') != std::string::npos) {
    d = Digest::parse(first);
  } else if (forced) {
    d = Digest::parse(std::string(to_string(*forced)) + ":" + first);
  } else if (first.size() == hex_length(DigestAlg::sha256)) {
    d = Digest::parse("sha256:" + first);
  } else {
    d = Digest::parse("xxh128:" + first);
  }
  if (!d) return std::nullopt;
  return CheckLine{*d, path};
}

int run_check(const DigestArgs& args, std::optional<DigestAlg> forced) {
  std::string text;
  if (args.check == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    text = ss.str();
  } else {
    std::ifstream in(args.check, std::ios::binary);
    if (!in) throw Error(errno != 0 ? errno : ENOENT, args.check, "open checklist");
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  std::istringstream lines(text);
  std::string line;
  int ok = 0, failed = 0, malformed = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    auto c = parse_check_line(line, forced);
    if (!c) {
      ++malformed;
      continue;
    }
    try {
      auto got = digest_file(c->path, c->digest.alg);
      if (got.digest == c->digest) {
        (void)std::printf("%s: OK\n", c->path.c_str());
        ++ok;
      } else {
        (void)std::printf("%s: FAILED\n", c->path.c_str());
        ++failed;
      }
    } catch (const Error& e) {
      (void)std::fprintf(stderr, "holdfast digest: %s\n", e.what());
      (void)std::printf("%s: FAILED open or read\n", c->path.c_str());
      ++failed;
    }
  }
  (void)std::fflush(stdout);
  if (malformed > 0) {
    (void)std::fprintf(stderr, "holdfast digest: %s: WARNING: %d line%s improperly formatted\n", args.check.c_str(),
                 malformed, malformed == 1 ? " is" : "s are");
  }
  if (ok + failed == 0) {
    throw Error(args.check, "check", "no properly formatted digest lines found", exit_code::data);
  }
  if (failed > 0) {
    (void)std::fprintf(stderr, "holdfast digest: WARNING: %d of %d computed digest%s did NOT match\n", failed, ok + failed,
                 ok + failed == 1 ? "" : "s");
    return exit_code::conflict;
  }
  return exit_code::ok;
}
}  // namespace

Run add_digest(CLI::App& root) {
  auto args = std::make_shared<DigestArgs>();
  auto* cmd = root.add_subcommand(
      "digest",
      "Print the digest of each PATH as `HEX  PATH` (like sha256sum; `-` is stdin), or with\n"
      "--check verify a list of such lines, `ALG (PATH) = HEX` (--tag) or `ALG:HEX  PATH` lines\n"
      "(`PATH: OK` / `PATH: FAILED`).\n"
      "Algorithms: xxh128 (XXH3-128, default, fast, not cryptographic) and sha256.\n"
      "Exit codes: 0 ok, 1 a --check line FAILED, 65 checklist without valid lines, 66 missing,\n"
      "73 a directory, 74 read error, 77 permission.");
  auto* paths = cmd->add_option("PATH", args->paths, "Files (`-` for stdin)");
  cmd->add_option("--alg,-a", args->alg, "xxh128 (default) or sha256");
  auto* check = cmd->add_option("--check,-c", args->check, "Read `HEX  PATH` lines from FILE (`-`: stdin) and verify them");
  auto* tag = cmd->add_flag("--tag", args->tag, "Print BSD-style `SHA256 (PATH) = HEX` / `XXH128 (PATH) = HEX` (as sha256sum --tag)");
  cmd->add_flag("--prefixed", args->prefixed, "Print `ALG:HEX  PATH` (the form `holdfast wait --digest` takes)")->excludes(tag);
  check->excludes(paths);
  return [args, cmd] {
    auto alg = parse_digest_alg(args->alg);
    if (!alg) throw Error("", "--alg " + args->alg, "unknown algorithm (xxh128, sha256)", exit_code::usage);
    bool alg_given = cmd->count("--alg") > 0;
    if (!args->check.empty()) return run_check(*args, alg_given ? alg : std::nullopt);
    if (args->paths.empty()) args->paths.push_back("-");
    int rc = exit_code::ok;
    for (const auto& p : args->paths) {
      try {
        auto d = digest_file(p, *alg);
        if (args->tag) {
          (void)std::printf("%s\n", tagged_line(d.digest, p).c_str());
        } else {
          (void)std::printf("%s  %s\n", args->prefixed ? d.digest.to_string().c_str() : d.digest.hex.c_str(), p.c_str());
        }
      } catch (const Error& e) {
        (void)std::fflush(stdout);
        (void)std::fprintf(stderr, "holdfast digest: %s\n", e.what());
        if (rc == exit_code::ok) rc = e.exit_code();
      }
    }
    return rc;
  };
}

}  // namespace holdfast::cli
