// ProbeReport as JSON (for machines) and as a table (for people), and the names of its enums.
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <string>

#include "holdfast/probe.hpp"

namespace holdfast {

namespace {

nlohmann::json tri(const std::optional<bool>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

std::string yes_no(const std::optional<bool>& v) { return v ? (*v ? "yes" : "no") : "?"; }

}  // namespace

std::string_view to_string(Primitive primitive) noexcept {
  switch (primitive) {
    case Primitive::mkdir: return "mkdir";
    case Primitive::excl: return "excl";
    case Primitive::link: return "link";
    case Primitive::rename: return "rename";
    case Primitive::flock: return "flock";
    case Primitive::ofd: return "ofd";
    case Primitive::posix: return "posix";
  }
  return "?";
}

std::optional<Primitive> parse_primitive(std::string_view name) noexcept {
  for (Primitive p : all_primitives()) {
    if (to_string(p) == name) return p;
  }
  return std::nullopt;
}

const std::vector<Primitive>& all_primitives() noexcept {
  static const std::vector<Primitive> all{Primitive::mkdir, Primitive::excl,  Primitive::link,
                                          Primitive::rename, Primitive::flock, Primitive::ofd,
                                          Primitive::posix};
  return all;
}

bool is_kernel_lock(Primitive p) noexcept {
  return p == Primitive::flock || p == Primitive::ofd || p == Primitive::posix;
}

std::string_view to_string(Verdict verdict) noexcept {
  switch (verdict) {
    case Verdict::safe: return "safe";
    case Verdict::unsafe: return "UNSAFE";
    case Verdict::unsupported: return "unsupported";
    case Verdict::inconclusive: return "inconclusive";
  }
  return "?";
}

std::optional<Verdict> parse_verdict(std::string_view name) noexcept {
  for (Verdict v : {Verdict::safe, Verdict::unsupported, Verdict::inconclusive}) {
    if (name == to_string(v)) return v;
  }
  if (name == "unsafe" || name == "UNSAFE") return Verdict::unsafe;
  return std::nullopt;
}

std::string ProbeReport::to_json() const {
  nlohmann::json j;
  j["directory"] = directory;
  j["filesystem"] = {{"type", filesystem.type},
                     {"magic", filesystem.magic},
                     {"mount_type", filesystem.mount_type},
                     {"mount_point", filesystem.mount_point},
                     {"source", filesystem.source},
                     {"options", filesystem.options}};
  j["workers"] = workers;
  j["rounds"] = rounds;
  j["elapsed_seconds"] = elapsed_seconds;
  auto& prims = j["primitives"] = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json p{{"primitive", std::string(to_string(r.primitive))},
                     {"verdict", r.verdict == Verdict::unsafe ? std::string("unsafe")
                                                              : std::string(to_string(r.verdict))},
                     {"rounds", r.rounds},
                     {"double_grants", r.double_grants},
                     {"max_winners", r.max_winners},
                     {"no_winner_rounds", r.no_winner_rounds},
                     {"errors", r.errors},
                     {"resource_errors", r.resource_errors},
                     {"first_error", r.first_error},
                     {"median_us", r.median_us},
                     {"p99_us", r.p99_us},
                     {"reason", r.reason}};
    if (r.semantics) {
      p["semantics"] = {{"excludes_other_process", tri(r.semantics->excludes_other_process)},
                        {"excludes_same_process", tri(r.semantics->excludes_same_process)},
                        {"closing_other_fd_drops", tri(r.semantics->closing_other_fd_drops)},
                        {"inherited_by_child", tri(r.semantics->inherited_by_child)},
                        {"survives_exec", tri(r.semantics->survives_exec)}};
    }
    prims.push_back(std::move(p));
  }
  j["automatic"] = {{"backend", std::string(holdfast::to_string(automatic_backend))},
                    {"reason", automatic_reason},
                    {"safe", tri(automatic_safe)}};
  j["recommended"] = recommended ? nlohmann::json(std::string(holdfast::to_string(*recommended)))
                                 : nlohmann::json(nullptr);
  return j.dump(2);
}

std::string ProbeReport::to_table() const {
  std::string out;
  out += fmt::format("directory   {}\n", directory);
  out += fmt::format("filesystem  {} (mount type {}, source {})\n", filesystem.type,
                     filesystem.mount_type.empty() ? "?" : filesystem.mount_type,
                     filesystem.source.empty() ? "?" : filesystem.source);
  out += fmt::format("mounted at  {} with {}\n", filesystem.mount_point.empty() ? "?" : filesystem.mount_point,
                     filesystem.options.empty() ? "?" : filesystem.options);
  out += fmt::format("race        {} workers, {} rounds per primitive, {:.1f} s\n\n", workers, rounds,
                     elapsed_seconds);
  out += fmt::format("{:<10}{:<12}{:>7}{:>8}{:>12}{:>11}  {}\n", "PRIMITIVE", "VERDICT", "ROUNDS",
                     "DOUBLE", "MEDIAN us", "P99 us", "WHY");
  for (const auto& r : results) {
    out += fmt::format("{:<10}{:<12}{:>7}{:>8}{:>12.1f}{:>11.1f}  {}\n", to_string(r.primitive),
                       to_string(r.verdict), r.rounds, r.double_grants, r.median_us, r.p99_us, r.reason);
  }
  bool any_sem = false;
  for (const auto& r : results) any_sem = any_sem || r.semantics.has_value();
  if (any_sem) {
    out += fmt::format("\n{:<9}{:>15}{:>15}{:>20}{:>16}{:>16}\n", "LOCK", "OTHER PROCESS", "SAME PROCESS",
                       "CLOSE OTHER FD", "SURVIVES FORK", "SURVIVES EXEC");
    out += fmt::format("{:<9}{:>15}{:>15}{:>20}{:>16}{:>16}\n", "", "excluded", "excluded", "drops lock",
                       "(child keeps)", "(command keeps)");
    for (const auto& r : results) {
      if (!r.semantics) continue;
      const auto& s = *r.semantics;
      out += fmt::format("{:<9}{:>15}{:>15}{:>20}{:>16}{:>16}\n", to_string(r.primitive),
                         yes_no(s.excludes_other_process), yes_no(s.excludes_same_process),
                         yes_no(s.closing_other_fd_drops), yes_no(s.inherited_by_child),
                         yes_no(s.survives_exec));
    }
  }
  out += "\n";
  std::string safe = !automatic_safe ? "not probed" : *automatic_safe ? "safe here" : "UNSAFE here";
  if (automatic_backend == Backend::automatic) {
    out += fmt::format("automatic   refuses: {}\n", automatic_reason);
  } else {
    out += fmt::format("automatic   picks {} ({}): {}\n", holdfast::to_string(automatic_backend),
                       automatic_reason, safe);
  }
  out += fmt::format("recommend   {}\n", recommended ? std::string(holdfast::to_string(*recommended))
                                                      : std::string("none: no lock backend is safe here"));
  return out;
}

}  // namespace holdfast
