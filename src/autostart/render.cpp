// What install writes: the systemd unit, the cron entry, and where each goes.
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "autostart/autostart.hpp"
#include "holdfast/error.hpp"
#include "sys/linkage.hpp"

namespace holdfast::autostart {

namespace {
// An absolute directory from the environment, without trailing slashes; "" if unset or relative
// (the XDG base directory spec says to ignore relative values).
std::string env_path(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || v[0] != '/') return {};
  std::string dir(v);
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

// "15s" or "1500ms": a value systemd's time parser reads exactly.
std::string systemd_time(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) return std::to_string(ms.count() / 1000) + "s";
  return std::to_string(ms.count()) + "ms";
}

// argv of the supervisor both the unit and the cron entry run.
std::vector<std::string> supervise_argv(const Request& r) {
  std::vector<std::string> argv{r.holdfast_path, "supervise", r.name};
  argv.insert(argv.end(), r.supervise_args.begin(), r.supervise_args.end());
  if (r.command.empty()) return argv;  // --start: nothing to run as a child
  argv.emplace_back("--");
  argv.insert(argv.end(), r.command.begin(), r.command.end());
  return argv;
}

std::string uninstall_hint(const Request& r) {
  return "holdfast autostart uninstall " + r.name + (r.scope == Scope::user ? " --user" : " --system");
}
}  // namespace

Host Host::detect(const std::string& root) {
  Host h;
  h.uid = ::geteuid();
  sys::require_dynamic_loader("the user database", "autostart: the user's name and home");
  const passwd* pw = ::getpwuid(h.uid);
  h.user = pw != nullptr ? pw->pw_name : std::to_string(h.uid);
  h.home = env_path("HOME");
  if (h.home.empty() && pw != nullptr) h.home = pw->pw_dir;
  h.config_home = env_path("XDG_CONFIG_HOME");
  if (h.config_home.empty()) h.config_home = h.home + "/.config";
  h.state_home = env_path("XDG_STATE_HOME");
  if (h.state_home.empty()) h.state_home = h.home + "/.local/state";
  // sd_booted(3): systemd is the init exactly when this directory exists. Meaningless for a tree.
  // HOLDFAST_TEST_SD_BOOTED=0|1 overrides the check, so tests can drive the live-systemd path
  // against a fake systemctl without a systemd (docs/AUTOSTART.md).
  struct stat st {};
  h.systemd_booted = root.empty() && ::lstat("/run/systemd/system", &st) == 0 && S_ISDIR(st.st_mode);
  if (const char* force = std::getenv("HOLDFAST_TEST_SD_BOOTED"); force != nullptr && root.empty()) {
    h.systemd_booted = std::string_view(force) == "1";
  }
  return h;
}

Layout Layout::for_scope(Scope scope, const Host& host) {
  Layout l;
  if (scope == Scope::system) {
    l.unit_dir = "/etc/systemd/system";
    l.wanted_by = "multi-user.target";
    l.manifest_dir = "/var/lib/holdfast/autostart";
  } else {
    if (host.home.empty() || host.home == "/") {
      throw Error("$HOME", "user units need a home directory", "HOME is unset or /", exit_code::usage);
    }
    l.unit_dir = host.config_home + "/systemd/user";
    l.wanted_by = "default.target";
    l.manifest_dir = host.state_home + "/holdfast/autostart";
  }
  l.wants_dir = l.unit_dir + "/" + l.wanted_by + ".wants";
  l.cron_d = "/etc/cron.d";
  return l;
}

std::string render_unit(const Request& r, const Layout& layout) {
  std::string u;
  u += "# Written by `holdfast autostart install " + r.name + "`. Remove with `" + uninstall_hint(r) + "`,\n";
  u += "# which refuses to delete this file once it has been edited.\n";
  u += "[Unit]\n";
  u += "Description=holdfast supervise " + r.name + "\n";
  // The supervisor does its own restarting with backoff and a start limit that pauses; systemd
  // only restarts the supervisor itself, and must never give up on it (systemd#6129).
  u += "StartLimitIntervalSec=0\n";
  u += "\n[Service]\n";
  // The supervisor stays in the foreground and sends READY=1 itself once its child is ready.
  u += "Type=notify\n";
  u += "NotifyAccess=main\n";
  u += "ExecStart=" + systemd_exec_line(supervise_argv(r)) + "\n";
  u += "Restart=always\n";
  u += "RestartSec=1s\n";
  // Readiness can legitimately take a whole backoff/pause cycle; a start timeout would kill the
  // supervisor and reset its backoff state, which is the opposite of what it is for.
  u += "TimeoutStartSec=infinity\n";
  // --keep: stopping the unit stops only the supervisor; the instance keeps running and the next
  // supervisor adopts it. --start: what the supervisor keeps true (a tmux server, say) was started
  // in this unit's cgroup, and supervise's own stop leaves it, so systemd's must too. Otherwise
  // the whole cgroup goes, as for any service.
  u += std::string("KillMode=") + (r.keep || r.external ? "process" : "control-group") + "\n";
  if (r.watchdog) {
    // The supervisor relays its child's WATCHDOG=1 pings; systemd's own watchdog is the outer
    // net, three intervals long, so the supervisor's watchdog (one interval) always acts first.
    u += "WatchdogSec=" + systemd_time(*r.watchdog * 3) + "\n";
  }
  u += "\n[Install]\n";
  u += "WantedBy=" + layout.wanted_by + "\n";
  return u;
}

std::string render_cron(const Request& r) {
  std::string line = "@reboot ";
  if (r.scope == Scope::system) line += "root ";
  bool first = true;
  for (const auto& arg : supervise_argv(r)) {
    if (!first) line += ' ';
    first = false;
    line += cron_word(arg);
  }
  return cron_marker(r.name, r.scope) + line + "\n";
}

std::string cron_marker(std::string_view name, Scope scope) {
  return "# holdfast autostart " + std::string(name) + ": remove with `holdfast autostart uninstall " +
         std::string(name) + (scope == Scope::user ? " --user" : " --system") + "`\n";
}

}  // namespace holdfast::autostart
