// holdfast autostart install|status|uninstall: start `holdfast supervise` at boot, reversibly.
//
// Parsed by hand rather than by CLI11: every option autostart does not know is a `supervise`
// option and must reach the unit verbatim, in order, with its value, whatever it looks like.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "autostart/autostart.hpp"
#include "commands.hpp"
#include "hand_over.hpp"
#include "duration.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
constexpr const char* kUsage =
    "Usage: holdfast autostart install   NAME [OPTIONS] [SUPERVISE OPTIONS] -- COMMAND [ARG...]\n"
    "       holdfast autostart install   NAME [OPTIONS] --check CMD --start CMD [SUPERVISE OPTIONS]\n"
    "       holdfast autostart status    [NAME] [--user|--system] [--root DIR]   (no NAME: all)\n"
    "       holdfast autostart uninstall NAME [--user|--system] [--root DIR] [--dry-run]\n"
    "\n"
    "Start `holdfast supervise NAME [SUPERVISE OPTIONS] -- COMMAND` at boot: a systemd unit\n"
    "holdfast-NAME.service (Type=notify, Restart=always; KillMode=process with --keep or --start)\n"
    "enabled as `systemctl enable` does; where systemd is not the init, a cron @reboot entry.\n"
    "install records what it created in a manifest; uninstall removes exactly that (the tree is as\n"
    "before) and refuses, removing nothing, if any of it changed since. Neither touches a running\n"
    "instance.\n"
    "\n"
    "Options:\n"
    "  --user | --system   a user unit (~/.config/systemd/user) or a system one (/etc/systemd/system);\n"
    "                      default: --system for root, --user otherwise\n"
    "  --root DIR          write into the tree DIR as if it were / (images, tests); never talks to\n"
    "                      a running systemd\n"
    "  --method M          systemd, cron or auto (default: systemd when it is the init or with --root,\n"
    "                      else cron)\n"
    "  --dry-run           print exactly what would be written and run; change nothing\n"
    "  --force             replace a different install of the same NAME\n"
    "  --linger            --user: enable lingering (loginctl enable-linger) so the unit starts at\n"
    "                      boot rather than at login\n"
    "  --now               also start the unit (systemctl start --no-block; live systemd only)\n"
    "  --holdfast PATH     the holdfast binary the unit runs (default: this one)\n"
    "Every other option before -- is passed to `holdfast supervise` as it is.\n"
    "\n"
    "Exit codes: 0 done (install of an identical unit, uninstall of nothing: no-ops), 1 NAME is\n"
    "installed differently (--force replaces it), 64 bad NAME or flags, 65 a file install wrote\n"
    "changed since (named; nothing removed), 66 no --root DIR, 69 no systemd and no cron, 73 a\n"
    "file not written by install is in the way (named), 75 another autostart holds the tree's\n"
    "lock over 30 s, 77 permission denied. status: 0 installed and enabled, 1\n"
    "installed but changed/missing/not enabled, 3 not installed. See docs/AUTOSTART.md.\n";

Error usage_error(const std::string& what, const std::string& cause) {
  return Error(what, "invalid argument", cause, exit_code::usage);
}

struct Parsed {
  std::string verb;
  autostart::Request request;
  bool scope_given = false;
  bool help = false;
};

Parsed parse(const std::vector<std::string>& args) {
  Parsed p;
  auto& r = p.request;
  if (args.empty()) throw usage_error("autostart", "missing verb: install, status or uninstall");
  if (args[0] == "-h" || args[0] == "--help") {
    p.help = true;
    return p;
  }
  p.verb = args[0];
  if (p.verb != "install" && p.verb != "status" && p.verb != "uninstall") {
    throw usage_error(p.verb, "unknown verb (install, status or uninstall)");
  }
  bool user = false;
  bool system = false;
  size_t i = 1;
  auto value = [&](const std::string& flag, const std::string& arg) {
    if (arg.size() > flag.size() && arg.compare(0, flag.size() + 1, flag + "=") == 0) return arg.substr(flag.size() + 1);
    if (i + 1 >= args.size()) throw usage_error(flag, "needs a value");
    return args[++i];
  };
  auto is = [](const std::string& arg, const std::string& flag) {
    return arg == flag || arg.compare(0, flag.size() + 1, flag + "=") == 0;
  };
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "-h" || a == "--help") {
      p.help = true;
    } else if (a == "--user") {
      user = true;
    } else if (a == "--system") {
      system = true;
    } else if (a == "--dry-run") {
      r.dry_run = true;
    } else if (a == "--force") {
      r.force = true;
    } else if (a == "--linger") {
      r.linger = true;
    } else if (a == "--now") {
      r.now = true;
    } else if (is(a, "--root")) {
      r.root = value("--root", a);
      if (r.root.empty()) throw usage_error("--root", "empty");
    } else if (is(a, "--holdfast")) {
      r.holdfast_path = value("--holdfast", a);
    } else if (is(a, "--method")) {
      auto m = value("--method", a);
      if (m == "systemd") {
        r.method = autostart::Method::systemd;
      } else if (m == "cron") {
        r.method = autostart::Method::cron;
      } else if (m == "auto") {
        r.method = autostart::Method::automatic;
      } else {
        throw usage_error("--method", m + " (expected systemd, cron or auto)");
      }
    } else if (r.name.empty()) {
      if (!a.empty() && a.front() == '-') throw usage_error(a, "NAME must come before supervise options");
      r.name = a;
    } else if (p.verb == "install") {
      r.supervise_args.push_back(a);
    } else {
      throw usage_error(a, "unexpected argument for " + p.verb);
    }
  }
  for (; i < args.size(); ++i) {
    if (p.verb != "install") throw usage_error(args[i], "unexpected argument for " + p.verb);
    r.command.push_back(args[i]);
  }
  if (p.help) return p;
  if (user && system) throw usage_error("--user", "--user and --system exclude each other");
  p.scope_given = user || system;
  r.scope = user ? autostart::Scope::user
            : system ? autostart::Scope::system
            : (::geteuid() == 0 ? autostart::Scope::system : autostart::Scope::user);
  if (r.name.empty() && p.verb != "status") throw usage_error(p.verb, "missing NAME");
  if (p.verb == "install") {
    if (r.holdfast_path.empty()) r.holdfast_path = public_executable();
    // The supervise options the unit itself depends on.
    const auto& s = r.supervise_args;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] == "--keep") r.keep = true;
      if (s[k] == "--start" || s[k].starts_with("--start=")) r.external = true;
      std::string text;
      if (s[k] == "--watchdog" && k + 1 < s.size()) {
        text = s[k + 1];
      } else if (s[k].starts_with("--watchdog=")) {
        text = s[k].substr(11);
      } else {
        continue;
      }
      auto d = parse_duration(text, "--watchdog");
      if (d.count() <= 0) throw usage_error("--watchdog", "must be more than 0");
      r.watchdog = std::chrono::ceil<std::chrono::milliseconds>(d);
    }
  }
  if (p.verb == "install" && r.command.empty() && !r.external) {
    throw usage_error(r.name, "missing COMMAND (give it after --; none only with supervise --start)");
  }
  return p;
}

void print(const autostart::Output& out) {
  for (const auto& l : out.lines) std::printf("%s\n", l.c_str());
  std::fflush(stdout);
  for (const auto& n : out.notes) std::fprintf(stderr, "%s\n", n.c_str());
}
}  // namespace

Run add_autostart(CLI::App& root) {
  auto* sub = root.add_subcommand("autostart",
                                  "Start `holdfast supervise NAME -- COMMAND` at boot (a systemd unit, or cron\n"
                                  "@reboot where systemd is not the init), reversibly: install, status, uninstall.\n"
                                  "`holdfast autostart --help` for the options.");
  sub->prefix_command();
  sub->set_help_flag();
  return [sub] {
    hand_over_if_static("autostart (the user database)");
    auto p = parse(sub->remaining());
    if (p.help) {
      std::printf("%s", kUsage);
      return 0;
    }
    autostart::Output out;
    if (p.verb == "install") {
      out = autostart::install(p.request);
    } else if (p.verb == "uninstall") {
      out = autostart::uninstall(p.request);
    } else {
      int rc = p.request.name.empty() ? autostart::status_all(p.request, out) : autostart::status(p.request, out);
      print(out);
      return rc;
    }
    print(out);
    return 0;
  };
}

}  // namespace holdfast::cli
