// holdfast probe: measure whether this filesystem's primitives are atomic and its locks enforced.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "holdfast/error.hpp"
#include "holdfast/probe.hpp"
#include "probe_ensure.hpp"

namespace holdfast::cli {
namespace {

struct ProbeArgs {
  std::vector<std::string> positional;  // [DIR], or with --ensure the COMMAND
  int workers = 20;
  int rounds = 500;
  std::string primitive = "all";
  bool json = false;
  bool no_semantics = false;
  bool ensure = false;
  std::string state_dir;
};

std::vector<Primitive> parse_primitives(const std::string& spec) {
  std::vector<Primitive> out;
  if (spec == "all") return out;
  std::stringstream ss(spec);
  std::string name;
  while (std::getline(ss, name, ',')) {
    auto p = parse_primitive(name);
    if (!p) {
      throw Error(name, "--primitive",
                  "unknown primitive (mkdir, excl, link, rename, flock, ofd, posix or all)",
                  exit_code::usage);
    }
    out.push_back(*p);
  }
  return out;
}

int run_probe(const ProbeArgs& a) {
  if (a.ensure) {
    if (a.positional.empty()) {
      throw Error("", "probe --ensure", "missing COMMAND (after --)", exit_code::usage);
    }
    return run_probe_ensure(a.workers, a.rounds, a.positional, a.json, a.state_dir);
  }
  if (a.positional.size() > 1) {
    throw Error(a.positional[1], "probe", "unexpected argument (one DIR at most)", exit_code::usage);
  }
  ProbeOptions options;
  options.directory = a.positional.empty() ? "." : a.positional[0];
  options.workers = a.workers;
  options.rounds = a.rounds;
  options.primitives = parse_primitives(a.primitive);
  options.semantics = !a.no_semantics;

  const bool tty = ::isatty(STDERR_FILENO) == 1;
  auto last = std::chrono::steady_clock::time_point{};
  bool drew = false;
  if (tty) {
    options.progress = [&](const ProbeProgress& p) {
      auto now = std::chrono::steady_clock::now();
      if (p.round != p.rounds && now - last < std::chrono::milliseconds(100)) return;
      last = now;
      std::fprintf(stderr, "\r\033[Kprobe: %-6s round %d/%d, %d double grants", std::string(to_string(p.primitive)).c_str(),
                   p.round, p.rounds, p.double_grants);
      std::fflush(stderr);
      drew = true;
    };
  }
  ProbeReport report = probe(options);
  if (drew) std::fprintf(stderr, "\r\033[K");
  std::string text = a.json ? report.to_json() + "\n" : report.to_table();
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  // 69: what holdfast would use here was measured unsafe. 74: something could not be measured
  // to the end (full, read-only or failing filesystem); the report says what was.
  if (report.automatic_safe == false) return exit_code::unavailable;
  bool inconclusive = false;
  for (const auto& r : report.results) inconclusive = inconclusive || r.verdict == Verdict::inconclusive;
  return inconclusive ? exit_code::io_error : exit_code::ok;
}

}  // namespace

Run add_probe(CLI::App& root) {
  auto args = std::make_shared<ProbeArgs>();
  auto* cmd = root.add_subcommand(
      "probe",
      "Race N processes on each filesystem primitive (mkdir, O_EXCL, link, rename, flock, OFD and\n"
      "POSIX locks) in DIR and report double grants, latency, lock semantics and which lock backend\n"
      "is safe there. Exit 69 if the backend holdfast would pick for DIR is unsafe.\n"
      "With --ensure: race `holdfast ensure` starts of COMMAND instead (see docs/PROBE.md).");
  cmd->add_option("dir", args->positional, "Directory to probe (default .); with --ensure, the COMMAND after --");
  cmd->add_option("--workers", args->workers, "Racing processes (default 20)")->check(CLI::Range(2, 1000));
  cmd->add_option("--rounds", args->rounds, "Rounds per primitive (default 500)")->check(CLI::Range(1, 10000000));
  cmd->add_option("--primitive", args->primitive,
                  "mkdir, excl, link, rename, flock, ofd, posix, a comma list, or all (default)");
  cmd->add_flag("--json", args->json, "Print the report as JSON");
  cmd->add_flag("--no-semantics", args->no_semantics, "Skip the kernel-lock semantics checks");
  cmd->add_flag("--ensure", args->ensure, "Race daemon starts of COMMAND through `holdfast ensure`");
  cmd->add_option("--state-dir", args->state_dir, "With --ensure: the state directory to use");
  return [args] { return run_probe(*args); };
}

}  // namespace holdfast::cli
