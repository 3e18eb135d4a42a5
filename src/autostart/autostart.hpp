// holdfast autostart: start `holdfast supervise NAME ... -- COMMAND` at boot, reversibly.
//
// install writes a systemd unit (or, where systemd is not the init, a cron @reboot entry) plus a
// manifest listing exactly what it created; uninstall consumes the manifest and removes exactly
// that, so the tree is byte-identical to before install (contents, modes, symlink targets and
// the directories install had to create). Nothing that changed since install is ever deleted:
// uninstall refuses, naming the file. Neither verb starts, stops or signals a running instance,
// unless install is asked to start the unit (--now). See docs/AUTOSTART.md.
//
// Every path below is "logical" (as seen on the target system); with a root directory set, the
// file operations happen under ROOT + path, and symlink targets stay logical (as `systemctl
// --root` writes them), so the tree is correct once ROOT becomes /.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace holdfast::autostart {

enum class Scope { user, system };
enum class Method { systemd, cron, automatic };

std::string_view to_string(Scope scope) noexcept;
std::string_view to_string(Method method) noexcept;

// ---- quoting (pure functions; contracts tested in tests/autostart) ----

// One word of a systemd ExecStart= line that systemd parses back to exactly `arg` (after its
// exec-time "$$" -> "$" and specifier "%%" -> "%" substitutions): always double-quoted, with
// '"' and '\' backslash-escaped, '$' and '%' doubled, and bytes outside printable ASCII written
// as \xNN (systemd refuses a line that is not UTF-8; its unescaping restores any byte). A lone
// ";" (systemd's command separator) is written \; unquoted.
std::string systemd_exec_word(std::string_view arg);
// The full ExecStart value for argv (argv[0] must be an absolute path).
std::string systemd_exec_line(const std::vector<std::string>& argv);

// A /bin/sh word for a crontab command that cron and then sh turn back into exactly `arg`:
// single-quoted, with each '\'' as '\'' and each '%' (cron's newline marker) placed outside the
// quotes as "\%". Throws Error(usage) naming `arg` if it holds a newline (a crontab entry is one
// line; there is no way to write one).
std::string cron_word(std::string_view arg);

// The unit name for instance NAME: "holdfast-NAME.service". NAME must already satisfy the
// instance-name rule ([A-Za-z0-9._-]{1,64}, no leading '.'), every character of which is valid
// in a unit name, so no escaping is needed and the name stays readable.
std::string unit_name(std::string_view name);
// The /etc/cron.d file name for NAME: "holdfast-" + NAME with '_' -> "_5f" and '.' -> "_2e"
// (Debian's cron ignores cron.d files whose names contain anything but [A-Za-z0-9_-]; the
// escape is injective because '_' always starts one).
std::string cron_file_name(std::string_view name);

// ---- requests ----

struct Request {
  std::string name;                          // instance name (validated)
  Scope scope = Scope::system;
  Method method = Method::automatic;
  std::string root;                          // "" = the live system; else a directory tree
  std::vector<std::string> supervise_args;   // passed to `holdfast supervise` verbatim
  bool keep = false;                         // supervise_args has --keep: KillMode=process
  // supervise_args has --start: the supervisor keeps an external thing true (say, a tmux server)
  // and runs no COMMAND; KillMode=process, since supervise's own stop leaves that thing running.
  bool external = false;
  std::optional<std::chrono::milliseconds> watchdog;  // supervise_args' --watchdog interval
  std::vector<std::string> command;          // COMMAND and its arguments
  std::string holdfast_path;                 // absolute path of the holdfast binary to run
  bool dry_run = false;
  bool force = false;                        // replace a different install of the same NAME
  bool linger = false;                       // --user: enable lingering (loginctl enable-linger)
  bool now = false;                          // also start the unit (live systemd only)
};

// Facts about the machine and the invoking user, resolved once (tests fake them via env).
struct Host {
  std::string user;          // login name of the scope's owner (root for --system)
  uid_t uid = 0;
  std::string home;          // $HOME (logical path)
  std::string config_home;   // $XDG_CONFIG_HOME or HOME/.config
  std::string state_home;    // $XDG_STATE_HOME or HOME/.local/state
  bool systemd_booted = false;  // /run/systemd/system is a directory (sd_booted), live only
  static Host detect(const std::string& root);
};

// Where things go for a scope (logical paths).
struct Layout {
  std::string unit_dir;      // /etc/systemd/system or CONFIG/systemd/user
  std::string wants_dir;     // UNIT_DIR/multi-user.target.wants or UNIT_DIR/default.target.wants
  std::string wanted_by;     // multi-user.target or default.target
  std::string manifest_dir;  // /var/lib/holdfast/autostart or STATE/holdfast/autostart
  std::string cron_d;        // /etc/cron.d
  static Layout for_scope(Scope scope, const Host& host);
};

// The generated unit text for a request (deterministic: the same request gives the same bytes).
std::string render_unit(const Request& request, const Layout& layout);
// The cron lines (marker comment + @reboot line, each ending in '\n') for a request: for the
// system scope the /etc/cron.d file's whole content, for the user scope the block appended to
// the crontab.
std::string render_cron(const Request& request);
// The first line of that block (with its '\n'): how uninstall finds the entry again.
std::string cron_marker(std::string_view name, Scope scope);

// ---- verbs ----

// Everything a verb prints goes through this (stdout lines; dry-run plans included).
struct Output {
  std::vector<std::string> lines;   // to stdout
  std::vector<std::string> notes;   // to stderr: warnings and advice
};

// Installs (or with dry_run, prints the plan). Returns normally on success, including "already
// installed, identical" (a no-op). Throws Error:
//   usage (64) bad request (NAME, argv with a newline for cron, relative holdfast path);
//   conflict (1) a different install of NAME exists and force is off;
//   cant_create (73) a file install must write exists and is not ours (named);
//   data (65) with force: the previous install's files changed since (named, nothing removed);
//   unavailable (69) no usable method (no systemd and no cron);
//   and errno-mapped codes for file-system failures (path named).
Output install(const Request& request);

// Removes what install wrote, from the manifest. Not installed: a no-op (prints so). Throws
// Error(data) naming the first file that changed since install (nothing is removed then).
Output uninstall(const Request& request);

// Reports installed/enabled/active and paths. Returns the exit status: 0 installed and enabled,
// 1 installed but not intact (a file changed, missing or not enabled), 3 not installed.
int status(const Request& request, Output& out);
// status for every install of the scope (request.name is ignored), sorted by NAME. Returns 0 if
// all are installed and enabled, 1 if any is not intact, 3 if there is none.
int status_all(const Request& request, Output& out);

}  // namespace holdfast::autostart
