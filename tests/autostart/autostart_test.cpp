// Tests for `holdfast autostart install|status|uninstall` (src/autostart, cli/autostart.cpp).
//
// Every install goes into a --root tree (or, for the user crontab, through a fake crontab(1) on
// PATH that keeps the crontab in a temp file), and every test compares the whole tree — paths,
// types, modes, content hashes, symlink targets — before install and after uninstall. Generated
// units are checked by the real systemd-analyze verify, and their ExecStart= is parsed back from
// systemd's own dump of the loaded unit.
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "autostart/autostart.hpp"
#include "gtest/gtest.h"
#include "holdfast/digest.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::CommandResult;
using testing::TempDir;
namespace fs = std::filesystem;

const std::string kCli = HOLDFAST_CLI_PATH;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// Every entry under `root`: type, mode, content hash or symlink target. Two equal listings mean
// the trees are byte-identical (times aside).
std::string listing(const std::string& root) {
  std::map<std::string, std::string> rows;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const std::string p = it->path().string();
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    std::string row = std::string(mode) + " uid=" + std::to_string(st.st_uid) + " ";
    if (S_ISLNK(st.st_mode)) {
      row += "link -> " + fs::read_symlink(it->path()).string();
    } else if (S_ISDIR(st.st_mode)) {
      row += "dir";
    } else {
      row += "file " + digest_bytes(DigestAlg::sha256, read_file(p)).to_string();
    }
    rows[p.substr(root.size())] = row;
  }
  std::string out;
  for (const auto& [path, row] : rows) out += path + "  " + row + "\n";
  return out;
}

// A HOME and a PATH for the command under test: XDG_* unset so the layout follows HOME, a fake
// crontab(1) first on PATH (FAKE_CRONTAB names the file that stands for the spool), and systemd
// taken as not the init whatever this machine runs, so no test talks to a real systemd.
struct Env {
  TempDir dir;
  std::string home = "/home/tester";
  std::string crontab_file;
  Env() : crontab_file(dir / "spool-crontab") {
    fs::create_directories(dir / "bin");
    write_file(dir / "bin/crontab",
               "#!/bin/sh\n"
               "# A stand-in for crontab(1): -l, -r and - on the file $FAKE_CRONTAB.\n"
               "case \"$1\" in\n"
               "  -l) [ -f \"$FAKE_CRONTAB\" ] || { echo \"no crontab for tester\" >&2; exit 1; }; cat \"$FAKE_CRONTAB\" ;;\n"
               "  -r) [ -f \"$FAKE_CRONTAB\" ] || { echo \"no crontab for tester\" >&2; exit 1; }; rm \"$FAKE_CRONTAB\" ;;\n"
               "  -) cat > \"$FAKE_CRONTAB.new\" && mv \"$FAKE_CRONTAB.new\" \"$FAKE_CRONTAB\" ;;\n"
               "  *) echo \"fake crontab: unsupported $*\" >&2; exit 2 ;;\n"
               "esac\n");
    ::chmod((dir / "bin/crontab").c_str(), 0755);
  }
  std::vector<std::string> prefix(const std::string& home_override = "") const {
    return {"env", "-u", "XDG_CONFIG_HOME", "-u", "XDG_STATE_HOME", "-u", "NOTIFY_SOCKET",
            "HOME=" + (home_override.empty() ? home : home_override),
            "PATH=" + dir.path() + "/bin:/usr/bin:/bin", "FAKE_CRONTAB=" + crontab_file,
            "HOLDFAST_TEST_SD_BOOTED=0"};  // as in a container: no systemd (a test may override)
  }
  CommandResult hf(const std::vector<std::string>& args, const std::string& home_override = "") const {
    auto argv = prefix(home_override);
    argv.push_back(kCli);
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::run(argv);
  }
};

std::string describe(const CommandResult& r) { return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "stderr:\n" + r.err; }

// ---- systemd-analyze ----

// Why systemd-analyze verify cannot run here, or "" if it can (checked once on a trivial unit).
const std::string& verify_unavailable() {
  static const std::string reason = [] {
    if (!exists("/usr/bin/systemd-analyze") && !exists("/bin/systemd-analyze")) {
      return std::string("systemd-analyze is not installed (Debian package systemd)");
    }
    TempDir d;
    write_file(d / "probe-ok.service", "[Service]\nExecStart=/bin/true\n");
    auto r = testing::run({"systemd-analyze", "verify", d / "probe-ok.service"});
    if (r.exit_code != 0) return "systemd-analyze verify fails on a trivial unit here: " + r.err;
    return std::string();
  }();
  return reason;
}

#define SKIP_WITHOUT_VERIFY()                                     \
  do {                                                            \
    if (!verify_unavailable().empty()) GTEST_SKIP() << verify_unavailable(); \
  } while (0)

// systemd-analyze verify --recursive-errors=yes on `unit` (a user unit with `user`). Returns the
// result with SYSTEMD_LOG_LEVEL=debug, whose stderr holds systemd's dump of the loaded unit.
CommandResult verify(const std::string& unit, bool user, const TempDir& runtime) {
  std::vector<std::string> argv{"env", "SYSTEMD_LOG_LEVEL=debug", "XDG_RUNTIME_DIR=" + runtime.path(),
                                "systemd-analyze", "verify", "--recursive-errors=yes"};
  if (user) argv.insert(argv.begin() + 5, "--user");
  argv.push_back(unit);
  return testing::run(argv);
}

// Warnings systemd prints about our unit (at any log level), e.g. "Ignoring unknown escape".
std::string unit_warnings(const CommandResult& r, const std::string& unit_file) {
  std::string out;
  std::istringstream in(r.err);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(unit_file + ":") != std::string::npos) out += line + "\n";
  }
  return out;
}

// Parses the "Command Line: ..." of systemd's unit dump back into argv. systemd prints each word
// either bare or double-quoted with C escapes (\" \\ \$ \n \t \NNN octal ...); '$' stays doubled
// there because variables are substituted at exec time, which this then does ("$$" -> "$").
std::vector<std::string> parse_dumped_command(const std::string& dump) {
  const std::string key = "Command Line: ";
  auto pos = dump.find(key);
  if (pos == std::string::npos) return {};
  auto end = dump.find('\n', pos);
  const std::string line = dump.substr(pos + key.size(), end - pos - key.size());
  std::vector<std::string> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    if (i >= line.size()) break;
    std::string w;
    bool quoted = false;
    while (i < line.size() && (quoted || line[i] != ' ')) {
      char c = line[i++];
      if (c == '"') {
        quoted = !quoted;
        continue;
      }
      if (c != '\\' || i >= line.size()) {
        w += c;
        continue;
      }
      char e = line[i++];
      switch (e) {
        case 'n': w += '\n'; break;
        case 't': w += '\t'; break;
        case 'r': w += '\r'; break;
        case 'a': w += '\a'; break;
        case 'b': w += '\b'; break;
        case 'f': w += '\f'; break;
        case 'v': w += '\v'; break;
        case 'x': {
          w += static_cast<char>(std::stoi(line.substr(i, 2), nullptr, 16));
          i += 2;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            w += static_cast<char>(std::stoi(line.substr(i - 1, 3), nullptr, 8));
            i += 2;
          } else {
            w += e;  // \\ \" \' \$ \`
          }
      }
    }
    // exec-time variable substitution: "$$" is a literal '$' (our writer emits no other '$').
    std::string unescaped;
    for (size_t k = 0; k < w.size(); ++k) {
      unescaped += w[k];
      if (w[k] == '$' && k + 1 < w.size() && w[k + 1] == '$') ++k;
    }
    words.push_back(unescaped);
  }
  return words;
}

// The argv cron and then /bin/sh give the command of a crontab entry (`line` after the time
// field and, for /etc/cron.d, the user): cron's '%' processing as Vixie cron does it, then sh.
std::vector<std::string> parse_cron_command(const std::string& command) {
  std::string processed;
  bool escaped = false;
  for (char ch : command) {
    if (escaped) {
      if (ch == '%') processed.pop_back();
      processed += ch;
      escaped = false;
      continue;
    }
    if (ch == '\\') escaped = true;
    if (ch == '%') break;  // the rest would be stdin
    processed += ch;
  }
  auto r = testing::run({"/bin/sh", "-c", "set -- " + processed + "\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t k = 0; k < r.out.size(); ++k) {
    if (r.out[k] == '\0') {
      out.push_back(r.out.substr(start, k - start));
      start = k + 1;
    }
  }
  return out;
}

// Arguments that break naive quoting, in systemd, in cron and in sh.
std::vector<std::string> nasty_argv() {
  return {"/bin/sh", "-c", "echo \"$HOME\" '$USER' ${PATH} $$ 100% %n %% a\\b \\\\ \\\" `id`",
          "two words", "", ";", "\\;", "x;y", "tab\there", "\"quoted\"", "'single'", "$", "$$", "%", "%%",
          "%h%u", "back\\", "\\n", "caf\xc3\xa9", std::string("raw\xff" "byte"), "-dash", "#hash", "a=b",
          "new\nline"};
}

std::vector<std::string> expected_argv(const std::string& name, const std::vector<std::string>& supervise,
                                       const std::vector<std::string>& command) {
  std::vector<std::string> v{kCli, "supervise", name};
  v.insert(v.end(), supervise.begin(), supervise.end());
  v.emplace_back("--");
  v.insert(v.end(), command.begin(), command.end());
  return v;
}

std::vector<std::string> install_args(const std::string& name, const std::vector<std::string>& flags,
                                      const std::vector<std::string>& command) {
  std::vector<std::string> v{"autostart", "install", name};
  v.insert(v.end(), flags.begin(), flags.end());
  v.emplace_back("--");
  v.insert(v.end(), command.begin(), command.end());
  return v;
}

// ---- tests ----

TEST(Autostart, SystemInstallVerifyUninstallLeavesTheTreeIdentical) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  // A tree that already has some of the directories (kept) and not others (created, then removed).
  write_file(root / "etc/systemd/system/existing.service", "[Service]\nExecStart=/bin/true\n");
  write_file(root / "etc/hostname", "box\n");
  fs::create_directories(root / "var/lib");
  const std::string before = listing(root.path());

  auto r = env.hf(install_args("web", {"--system", "--root", root.path(), "--keep", "--backoff", "1s..30s"},
                               {"/bin/sleep", "1000"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string unit = root / "etc/systemd/system/holdfast-web.service";
  const std::string link = root / "etc/systemd/system/multi-user.target.wants/holdfast-web.service";
  ASSERT_TRUE(exists(unit));
  EXPECT_EQ(fs::read_symlink(link).string(), "/etc/systemd/system/holdfast-web.service");
  const std::string text = read_file(unit);
  EXPECT_NE(text.find("Type=notify\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Restart=always\n"), std::string::npos) << text;
  EXPECT_NE(text.find("KillMode=process\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("WatchdogSec="), std::string::npos) << text;
  EXPECT_NE(text.find("WantedBy=multi-user.target\n"), std::string::npos) << text;
  EXPECT_TRUE(exists(root / "var/lib/holdfast/autostart/web.json"));

  auto v = verify(unit, false, runtime);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(unit_warnings(v, unit), "");
  EXPECT_EQ(parse_dumped_command(v.out + v.err),
            expected_argv("web", {"--keep", "--backoff", "1s..30s"}, {"/bin/sleep", "1000"}));

  auto s = env.hf({"autostart", "status", "web", "--system", "--root", root.path()});
  EXPECT_EQ(s.exit_code, 0) << describe(s);
  EXPECT_NE(s.out.find("enabled:  yes"), std::string::npos) << s.out;
  EXPECT_NE(s.out.find("as written"), std::string::npos) << s.out;

  auto u = env.hf({"autostart", "uninstall", "web", "--system", "--root", root.path()});
  ASSERT_EQ(u.exit_code, 0) << describe(u);
  EXPECT_EQ(listing(root.path()), before);
  auto s2 = env.hf({"autostart", "status", "web", "--system", "--root", root.path()});
  EXPECT_EQ(s2.exit_code, 3) << describe(s2);
}

TEST(Autostart, EmptyTreeGetsEveryDirectoryBackOut) {
  Env env;
  TempDir root;
  auto r = env.hf(install_args("a", {"--system", "--root", root.path()}, {"/bin/true"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  auto u = env.hf({"autostart", "uninstall", "a", "--system", "--root", root.path()});
  ASSERT_EQ(u.exit_code, 0) << describe(u);
  EXPECT_EQ(listing(root.path()), "");

  // Someone puts their own unit into a directory install created: uninstall removes only what it
  // wrote and keeps that directory (and its parents), saying so.
  ASSERT_EQ(env.hf(install_args("a", {"--system", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
  write_file(root / "etc/systemd/system/theirs.service", "[Service]\nExecStart=/bin/true\n");
  auto k = env.hf({"autostart", "uninstall", "a", "--system", "--root", root.path()});
  ASSERT_EQ(k.exit_code, 0) << describe(k);
  EXPECT_NE(k.err.find("kept " + root.path() + "/etc/systemd/system: not empty"), std::string::npos) << k.err;
  EXPECT_EQ(read_file(root / "etc/systemd/system/theirs.service"), "[Service]\nExecStart=/bin/true\n");
  EXPECT_FALSE(exists(root / "etc/systemd/system/holdfast-a.service"));
  EXPECT_FALSE(exists(root / "etc/systemd/system/multi-user.target.wants"));
  EXPECT_FALSE(exists(root / "var"));
  fs::remove(root / "etc/systemd/system/theirs.service");
  EXPECT_EQ(listing(root.path()).find("theirs"), std::string::npos);
}

TEST(Autostart, WatchdogAndDefaultKillMode) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  auto r = env.hf(install_args("wd", {"--system", "--root", root.path(), "--watchdog", "1500ms"}, {"/bin/true"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string unit = root / "etc/systemd/system/holdfast-wd.service";
  const std::string text = read_file(unit);
  EXPECT_NE(text.find("WatchdogSec=4500ms\n"), std::string::npos) << text;
  EXPECT_NE(text.find("KillMode=control-group\n"), std::string::npos) << text;
  auto v = verify(unit, false, runtime);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(unit_warnings(v, unit), "");
}

// The case that started issue 11: a tmux session kept true with --check/--start and no COMMAND.
// The tmux server lives in the unit's cgroup and supervise's own stop leaves it, so systemd's
// stop must too: KillMode=process.
TEST(Autostart, ExternalThingWithoutCommandKeepsItsProcesses) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  const std::vector<std::string> supervise{"--check", "tmux has-session -t fm", "--start", "tmux new-session -d -s fm"};
  std::vector<std::string> args{"autostart", "install", "fm", "--system", "--root", root.path()};
  args.insert(args.end(), supervise.begin(), supervise.end());
  auto r = env.hf(args);
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string unit = root / "etc/systemd/system/holdfast-fm.service";
  EXPECT_NE(read_file(unit).find("KillMode=process\n"), std::string::npos) << read_file(unit);
  auto v = verify(unit, false, runtime);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  std::vector<std::string> expected{kCli, "supervise", "fm"};
  expected.insert(expected.end(), supervise.begin(), supervise.end());
  EXPECT_EQ(parse_dumped_command(v.out + v.err), expected);
  // Without --start there must be a COMMAND.
  auto none = env.hf({"autostart", "install", "x", "--system", "--root", root.path(), "--check", "true"});
  EXPECT_EQ(none.exit_code, 64) << describe(none);
  EXPECT_NE(none.err.find("missing COMMAND"), std::string::npos) << none.err;
}

TEST(Autostart, UserInstallVerifyUninstallWithLinger) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  fs::create_directories(root / "home/tester");
  const std::string before = listing(root.path());
  auto r = env.hf(install_args("notes", {"--user", "--root", root.path()}, {"/bin/sleep", "1000"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  // Lingering is off in the tree: install says what that means and how to turn it on.
  EXPECT_NE(r.err.find("lingering is off"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--linger"), std::string::npos) << r.err;
  const std::string unit = root / "home/tester/.config/systemd/user/holdfast-notes.service";
  ASSERT_TRUE(exists(unit)) << listing(root.path());
  EXPECT_EQ(fs::read_symlink(root / "home/tester/.config/systemd/user/default.target.wants/holdfast-notes.service")
                .string(),
            "/home/tester/.config/systemd/user/holdfast-notes.service");
  EXPECT_TRUE(exists(root / "home/tester/.local/state/holdfast/autostart/notes.json"));
  EXPECT_NE(read_file(unit).find("WantedBy=default.target\n"), std::string::npos);
  auto v = verify(unit, true, runtime);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(unit_warnings(v, unit), "");
  auto u = env.hf({"autostart", "uninstall", "notes", "--user", "--root", root.path()});
  ASSERT_EQ(u.exit_code, 0) << describe(u);
  EXPECT_EQ(listing(root.path()), before);

  // --linger in a tree writes what logind records for a lingering user, and takes it back.
  auto l = env.hf(install_args("notes", {"--user", "--linger", "--root", root.path()}, {"/bin/true"}));
  ASSERT_EQ(l.exit_code, 0) << describe(l);
  EXPECT_TRUE(exists(root / "var/lib/systemd/linger/" + std::string(::getpwuid(::geteuid())->pw_name)))
      << listing(root.path());
  EXPECT_EQ(l.err.find("lingering is off"), std::string::npos) << l.err;
  auto s = env.hf({"autostart", "status", "notes", "--user", "--root", root.path()});
  EXPECT_NE(s.out.find("linger:   on"), std::string::npos) << s.out;
  // A second install that also wants lingering shares the file: it stays until the last one goes.
  ASSERT_EQ(env.hf(install_args("more", {"--user", "--linger", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
  auto u2 = env.hf({"autostart", "uninstall", "notes", "--user", "--root", root.path()});
  ASSERT_EQ(u2.exit_code, 0) << describe(u2);
  EXPECT_TRUE(exists(root / "var/lib/systemd/linger/" + std::string(::getpwuid(::geteuid())->pw_name)));
  ASSERT_EQ(env.hf({"autostart", "uninstall", "more", "--user", "--root", root.path()}).exit_code, 0);
  EXPECT_EQ(listing(root.path()), before);
}

TEST(Autostart, NastyArgumentsSurviveSystemdParsing) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  auto command = nasty_argv();
  std::vector<std::string> supervise{"--check", "test -e '/tmp/a b' && echo $X%", "--env", "K=v a\"l"};
  auto flags = supervise;
  flags.insert(flags.begin(), {"--system", "--root", root.path()});
  auto r = env.hf(install_args("nasty", flags, command));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string unit = root / "etc/systemd/system/holdfast-nasty.service";
  auto v = verify(unit, false, runtime);
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(unit_warnings(v, unit), "");
  EXPECT_EQ(parse_dumped_command(v.out + v.err), expected_argv("nasty", supervise, command)) << read_file(unit);
}

// End to end without systemd as the init: the ExecStart= that systemd parsed, run as systemd
// would exec it, starts `holdfast supervise`, which accepts every option and runs the command
// with exactly the arguments given to install.
TEST(Autostart, ParsedExecStartRunsSuperviseWithTheExactArguments) {
  SKIP_WITHOUT_VERIFY();
  Env env;
  TempDir root;
  TempDir runtime;
  TempDir state;
  const std::string out = state / "argv.out";
  std::vector<std::string> command{"/bin/sh", "-c", "for a; do printf '%s\\0' \"$a\"; done > \"$0\"", out};
  const auto nasty = nasty_argv();
  command.insert(command.end(), nasty.begin() + 3, nasty.end());
  std::vector<std::string> flags{"--system", "--root", root.path(), "--restart", "never", "--state-dir",
                                 state / "run", "--log", state / "log"};
  auto r = env.hf(install_args("e2e", flags, command));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string unit = root / "etc/systemd/system/holdfast-e2e.service";
  auto v = verify(unit, false, runtime);
  ASSERT_EQ(v.exit_code, 0) << v.err;
  auto argv = parse_dumped_command(v.out + v.err);
  ASSERT_FALSE(argv.empty());
  argv.insert(argv.begin(), {"env", "-u", "NOTIFY_SOCKET", "-u", "WATCHDOG_USEC"});
  auto run = testing::run(argv);
  ASSERT_EQ(run.exit_code, 0) << describe(run) << read_file(state / "log");
  std::vector<std::string> got;
  const std::string bytes = read_file(out);
  size_t start = 0;
  for (size_t k = 0; k < bytes.size(); ++k) {
    if (bytes[k] == '\0') {
      got.push_back(bytes.substr(start, k - start));
      start = k + 1;
    }
  }
  EXPECT_EQ(got, std::vector<std::string>(nasty.begin() + 3, nasty.end()));
}

TEST(Autostart, DryRunPrintsThePlanAndChangesNothing) {
  Env env;
  TempDir root;
  write_file(root / "etc/hostname", "box\n");
  const std::string before = listing(root.path());
  auto r = env.hf(install_args("web", {"--system", "--root", root.path(), "--dry-run"}, {"/bin/echo", "hi"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(listing(root.path()), before);
  EXPECT_NE(r.out.find("would write " + root.path() + "/etc/systemd/system/holdfast-web.service"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("  | ExecStart="), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("would link " + root.path() + "/etc/systemd/system/multi-user.target.wants/holdfast-web.service -> "
                       "/etc/systemd/system/holdfast-web.service"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("systemctl"), std::string::npos) << "a --root install never talks to systemd\n" << r.out;

  // The printed unit is exactly the one a real install writes.
  ASSERT_EQ(env.hf(install_args("web", {"--system", "--root", root.path()}, {"/bin/echo", "hi"})).exit_code, 0);
  std::string printed;
  bool in_unit = false;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("would ")) in_unit = line.find("holdfast-web.service (0644)") != std::string::npos;
    else if (in_unit && line.starts_with("  | ")) printed += line.substr(4) + "\n";
  }
  EXPECT_EQ(printed, read_file(root / "etc/systemd/system/holdfast-web.service"));

  const std::string installed = listing(root.path());
  auto d = env.hf({"autostart", "uninstall", "web", "--system", "--root", root.path(), "--dry-run"});
  ASSERT_EQ(d.exit_code, 0) << describe(d);
  EXPECT_NE(d.out.find("would remove " + root.path() + "/etc/systemd/system/holdfast-web.service"), std::string::npos)
      << d.out;
  EXPECT_EQ(listing(root.path()), installed);
}

TEST(Autostart, RefusesBadNames) {
  Env env;
  TempDir root;
  for (const std::string& name : std::vector<std::string>{"a/b", "x y", ".hidden", std::string(65, 'n'), "a@b", "caf\xc3\xa9", "$x", "a\\x2d"}) {
    auto r = env.hf(install_args(name, {"--system", "--root", root.path()}, {"/bin/true"}));
    EXPECT_EQ(r.exit_code, 64) << name << "\n" << describe(r);
    EXPECT_NE(r.err.find("invalid instance name"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }
  EXPECT_EQ(listing(root.path()), "");
  // Every valid name is a valid unit name as it is (dots, dashes, underscores).
  auto ok = env.hf(install_args("A.b_c-9", {"--system", "--root", root.path()}, {"/bin/true"}));
  ASSERT_EQ(ok.exit_code, 0) << describe(ok);
  EXPECT_TRUE(exists(root / "etc/systemd/system/holdfast-A.b_c-9.service"));
}

TEST(Autostart, UninstallRefusesAnEditedUnitOrLinkAndRemovesNothing) {
  Env env;
  TempDir root;
  ASSERT_EQ(env.hf(install_args("web", {"--system", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
  const std::string unit = root / "etc/systemd/system/holdfast-web.service";
  write_file(unit, read_file(unit) + "Environment=EDITED=1\n");
  const std::string edited = listing(root.path());
  auto u = env.hf({"autostart", "uninstall", "web", "--system", "--root", root.path()});
  EXPECT_EQ(u.exit_code, 65) << describe(u);
  EXPECT_NE(u.err.find(unit + ": not removed: changed since"), std::string::npos) << u.err;
  EXPECT_EQ(std::count(u.err.begin(), u.err.end(), '\n'), 1) << u.err;
  EXPECT_EQ(listing(root.path()), edited);
  auto s = env.hf({"autostart", "status", "web", "--system", "--root", root.path()});
  EXPECT_EQ(s.exit_code, 1) << describe(s);
  EXPECT_NE(s.out.find("CHANGED"), std::string::npos) << s.out;

  // A mode change counts as a change too; so does a link pointed elsewhere.
  auto fresh = TempDir();
  ASSERT_EQ(env.hf(install_args("m", {"--system", "--root", fresh.path()}, {"/bin/true"})).exit_code, 0);
  ::chmod((fresh / "etc/systemd/system/holdfast-m.service").c_str(), 0600);
  EXPECT_EQ(env.hf({"autostart", "uninstall", "m", "--system", "--root", fresh.path()}).exit_code, 65);
  ::chmod((fresh / "etc/systemd/system/holdfast-m.service").c_str(), 0644);
  const std::string link = fresh / "etc/systemd/system/multi-user.target.wants/holdfast-m.service";
  fs::remove(link);
  fs::create_symlink("/dev/null", link);
  auto ul = env.hf({"autostart", "uninstall", "m", "--system", "--root", fresh.path()});
  EXPECT_EQ(ul.exit_code, 65) << describe(ul);
  EXPECT_NE(ul.err.find(link), std::string::npos) << ul.err;
}

TEST(Autostart, InstallRefusesAForeignFileInTheWay) {
  Env env;
  TempDir root;
  write_file(root / "etc/systemd/system/holdfast-web.service", "[Service]\nExecStart=/bin/mine\n");
  const std::string before = listing(root.path());
  auto r = env.hf(install_args("web", {"--system", "--root", root.path()}, {"/bin/true"}));
  EXPECT_EQ(r.exit_code, 73) << describe(r);
  EXPECT_NE(r.err.find(root.path() + "/etc/systemd/system/holdfast-web.service: cannot install: exists and was not "
                                     "written by holdfast autostart"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(listing(root.path()), before);
  auto s = env.hf({"autostart", "status", "web", "--system", "--root", root.path()});
  EXPECT_EQ(s.exit_code, 3) << describe(s);
  EXPECT_NE(s.out.find("was not written by holdfast autostart"), std::string::npos) << s.out;
}

TEST(Autostart, ReinstallIsANoOpAndADifferentOneNeedsForce) {
  Env env;
  TempDir root;
  auto args = install_args("web", {"--system", "--root", root.path()}, {"/bin/echo", "one"});
  ASSERT_EQ(env.hf(args).exit_code, 0);
  const std::string once = listing(root.path());
  auto again = env.hf(args);
  EXPECT_EQ(again.exit_code, 0) << describe(again);
  EXPECT_NE(again.out.find("already installed, identical"), std::string::npos) << again.out;
  EXPECT_EQ(listing(root.path()), once);

  // A missing link is put back by an identical install.
  fs::remove(root / "etc/systemd/system/multi-user.target.wants/holdfast-web.service");
  ASSERT_EQ(env.hf(args).exit_code, 0);
  EXPECT_EQ(listing(root.path()), once);

  auto other = install_args("web", {"--system", "--root", root.path()}, {"/bin/echo", "two"});
  auto refused = env.hf(other);
  EXPECT_EQ(refused.exit_code, 1) << describe(refused);
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << refused.err;
  EXPECT_EQ(listing(root.path()), once);

  other.insert(other.begin() + 3, "--force");
  auto dry = other;
  dry.insert(dry.begin() + 3, "--dry-run");
  auto planned = env.hf(dry);
  ASSERT_EQ(planned.exit_code, 0) << describe(planned);
  EXPECT_NE(planned.out.find("would remove " + root.path() + "/etc/systemd/system/holdfast-web.service"), std::string::npos)
      << planned.out;
  EXPECT_NE(planned.out.find("would write " + root.path() + "/etc/systemd/system/holdfast-web.service"), std::string::npos)
      << planned.out;
  EXPECT_EQ(listing(root.path()), once);
  auto forced = env.hf(other);
  ASSERT_EQ(forced.exit_code, 0) << describe(forced);
  EXPECT_NE(read_file(root / "etc/systemd/system/holdfast-web.service").find("\"two\""), std::string::npos);
  ASSERT_EQ(env.hf({"autostart", "uninstall", "web", "--system", "--root", root.path()}).exit_code, 0);
  EXPECT_EQ(listing(root.path()), "");
}

TEST(Autostart, TwoInstallsShareDirectoriesAndTheLastOneOutRemovesThem) {
  Env env;
  for (bool a_first : {true, false}) {
    TempDir root;
    write_file(root / "etc/hostname", "box\n");
    const std::string before = listing(root.path());
    ASSERT_EQ(env.hf(install_args("a", {"--system", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
    ASSERT_EQ(env.hf(install_args("b", {"--system", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
    ASSERT_EQ(env.hf(install_args("c", {"--system", "--method", "cron", "--root", root.path()}, {"/bin/true"})).exit_code, 0);
    auto all = env.hf({"autostart", "status", "--system", "--root", root.path()});
    EXPECT_EQ(all.exit_code, 0) << describe(all);
    EXPECT_NE(all.out.find("a: installed (system, systemd)\n"), std::string::npos) << all.out;
    EXPECT_NE(all.out.find("b: installed (system, systemd)\n"), std::string::npos) << all.out;
    EXPECT_NE(all.out.find("c: installed (system, cron)\n"), std::string::npos) << all.out;
    for (const std::string& n : std::vector<std::string>{a_first ? "a" : "b", a_first ? "b" : "a", "c"}) {
      auto u = env.hf({"autostart", "uninstall", n, "--system", "--root", root.path()});
      ASSERT_EQ(u.exit_code, 0) << describe(u);
    }
    EXPECT_EQ(listing(root.path()), before);
    EXPECT_EQ(env.hf({"autostart", "status", "--system", "--root", root.path()}).exit_code, 3);
  }
}

TEST(Autostart, SystemCronFileInATreeParsesBackAndUninstallsExactly) {
  Env env;
  TempDir root;
  fs::create_directories(root / "etc/cron.d");
  write_file(root / "etc/cron.d/other", "@reboot root /bin/true\n");
  const std::string before = listing(root.path());
  auto command = nasty_argv();
  command.pop_back();  // a crontab entry is one line: "new\nline" cannot be written (tested below)
  auto r = env.hf(install_args("web.x_y", {"--system", "--method", "cron", "--root", root.path(), "--keep"}, command));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const std::string file = root / "etc/cron.d/holdfast-web_2ex_5fy";
  ASSERT_TRUE(exists(file)) << listing(root.path());
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  const std::string text = read_file(file);
  const auto at = text.find("\n@reboot root ");
  ASSERT_NE(at, std::string::npos) << text;
  std::string line = text.substr(at + 14);
  ASSERT_EQ(line.back(), '\n');
  line.pop_back();
  EXPECT_EQ(parse_cron_command(line), expected_argv("web.x_y", {"--keep"}, command)) << text;
  auto s = env.hf({"autostart", "status", "web.x_y", "--system", "--root", root.path()});
  EXPECT_EQ(s.exit_code, 0) << describe(s);
  EXPECT_NE(s.out.find("cron"), std::string::npos) << s.out;
  ASSERT_EQ(env.hf({"autostart", "uninstall", "web.x_y", "--system", "--root", root.path()}).exit_code, 0);
  EXPECT_EQ(listing(root.path()), before);

  auto nl = env.hf(install_args("nl", {"--system", "--method", "cron", "--root", root.path()}, {"/bin/echo", "a\nb"}));
  EXPECT_EQ(nl.exit_code, 64) << describe(nl);
  EXPECT_NE(nl.err.find("newline"), std::string::npos) << nl.err;
  EXPECT_EQ(listing(root.path()), before);
}

TEST(Autostart, UserCrontabEntryIsAddedAndRemovedByteForByte) {
  Env env;
  TempDir home;
  const auto command = std::vector<std::string>{"/bin/sh", "-c", "tmux has-session -t fm || tmux new -d -s fm", "50%"};
  // No crontab at all before: none after.
  auto r = env.hf(install_args("fm", {"--user", "--method", "cron"}, command), home.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  ASSERT_TRUE(exists(env.crontab_file));
  const std::string tab = read_file(env.crontab_file);
  const auto at = tab.find("\n@reboot ");
  ASSERT_NE(at, std::string::npos) << tab;
  std::string line = tab.substr(at + 9);
  line.pop_back();
  EXPECT_EQ(parse_cron_command(line), expected_argv("fm", {}, command)) << tab;
  auto s = env.hf({"autostart", "status", "fm", "--user"}, home.path());
  EXPECT_EQ(s.exit_code, 0) << describe(s);
  auto u = env.hf({"autostart", "uninstall", "fm", "--user"}, home.path());
  ASSERT_EQ(u.exit_code, 0) << describe(u);
  EXPECT_FALSE(exists(env.crontab_file)) << read_file(env.crontab_file);
  EXPECT_EQ(listing(home.path()), "");

  // An existing crontab whose last line has no newline: exactly those bytes after uninstall.
  const std::string mine = "MAILTO=me\n# my jobs\n*/5 * * * * /usr/bin/backup 'x%y'";
  write_file(env.crontab_file, mine);
  ASSERT_EQ(env.hf(install_args("fm", {"--user", "--method", "cron"}, command), home.path()).exit_code, 0);
  EXPECT_TRUE(read_file(env.crontab_file).starts_with(mine + "\n# holdfast autostart fm"));
  // Someone edits the entry: uninstall refuses and changes nothing.
  const std::string installed = read_file(env.crontab_file);
  std::string edited = installed;
  edited.insert(edited.size() - 1, " --edited");
  write_file(env.crontab_file, edited);
  auto refused = env.hf({"autostart", "uninstall", "fm", "--user"}, home.path());
  EXPECT_EQ(refused.exit_code, 65) << describe(refused);
  EXPECT_NE(refused.err.find("crontab of"), std::string::npos) << refused.err;
  EXPECT_EQ(read_file(env.crontab_file), edited);
  write_file(env.crontab_file, installed);
  // Jobs added after install stay.
  write_file(env.crontab_file, installed + "@daily /bin/true\n");
  ASSERT_EQ(env.hf({"autostart", "uninstall", "fm", "--user"}, home.path()).exit_code, 0);
  EXPECT_EQ(read_file(env.crontab_file), mine + "\n@daily /bin/true\n");
  EXPECT_EQ(listing(home.path()), "");
}

TEST(Autostart, AutoMethodFallsBackToCronWithoutSystemd) {
  Env env;
  TempDir home;
  auto r = env.hf(install_args("fb", {"--user"}, {"/bin/true"}), home.path());
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.err.find("systemd is not the init here"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cron @reboot"), std::string::npos) << r.err;
  EXPECT_TRUE(exists(env.crontab_file));
  ASSERT_EQ(env.hf({"autostart", "uninstall", "fb", "--user"}, home.path()).exit_code, 0);
  EXPECT_FALSE(exists(env.crontab_file));
  EXPECT_EQ(listing(home.path()), "");

  // Neither systemd nor cron: a clear refusal (69), nothing written.
  auto argv = std::vector<std::string>{"env", "-u", "XDG_CONFIG_HOME", "-u", "XDG_STATE_HOME", "HOME=" + home.path(),
                                       "PATH=/nonexistent", "HOLDFAST_TEST_SD_BOOTED=0", kCli};
  for (const auto& a : install_args("fb", {"--user"}, {"/bin/true"})) argv.push_back(a);
  auto none = testing::run(argv);
  EXPECT_EQ(none.exit_code, 69) << describe(none);
  EXPECT_NE(none.err.find("cron is not installed"), std::string::npos) << none.err;
  EXPECT_EQ(listing(home.path()), "");
}

TEST(Autostart, BadInputIsOneLineWithADocumentedCode) {
  Env env;
  TempDir root;
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"autostart", "install", "x", "--system", "--root", root / "missing", "--", "/bin/true"}, 66, "missing"},
      {{"autostart", "install", "x", "--method", "upstart", "--", "/bin/true"}, 64, "upstart"},
      {{"autostart", "install", "x", "--system", "--root", root.path()}, 64, "missing COMMAND"},
      {{"autostart", "install", "--keep", "x", "--", "/bin/true"}, 64, "NAME must come before"},
      {{"autostart", "frobnicate", "x"}, 64, "unknown verb"},
      {{"autostart", "status", "x", "extra"}, 64, "unexpected argument"},
      {{"autostart", "install", "x", "--user", "--system", "--", "/bin/true"}, 64, "exclude each other"},
      {{"autostart", "install", "x", "--watchdog", "soon", "--system", "--root", root.path(), "--", "/bin/true"}, 64,
       "--watchdog"},
      {{"autostart", "install", "x", "--user", "--method", "cron", "--root", root.path(), "--", "/bin/true"}, 64,
       "crontab"},
  };
  for (const auto& c : cases) {
    auto r = env.hf(c.args);
    EXPECT_EQ(r.exit_code, c.code) << describe(r);
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_EQ(listing(root.path()), "");
  // A corrupt manifest is named (65), and nothing is removed.
  write_file(root / "var/lib/holdfast/autostart/x.json", "{not json");
  const std::string before = listing(root.path());
  auto u = env.hf({"autostart", "uninstall", "x", "--system", "--root", root.path()});
  EXPECT_EQ(u.exit_code, 65) << describe(u);
  EXPECT_NE(u.err.find(root.path() + "/var/lib/holdfast/autostart/x.json: corrupt manifest"), std::string::npos) << u.err;
  EXPECT_EQ(listing(root.path()), before);
}

// The live-systemd path (no --root, systemd the init), driven against fake systemctl/loginctl that
// log their argv: install writes the files itself and reloads; --now starts without blocking;
// uninstall never stops the running unit, only says how; --linger is taken back by uninstall.
TEST(Autostart, LiveSystemdIsReloadedNeverStopped) {
  Env env;
  TempDir home;
  const std::string log = env.dir / "calls.log";
  for (const std::string tool : {"systemctl", "loginctl"}) {
    write_file(env.dir / ("bin/" + tool),
               "#!/bin/sh\necho \"" + tool + " $*\" >> '" + log + "'\n"
               "case \"$*\" in *is-active*) echo active ;; esac\nexit 0\n");
    ::chmod((env.dir / ("bin/" + tool)).c_str(), 0755);
  }
  auto live = [&](std::vector<std::string> args) {
    auto argv = env.prefix(home.path());
    argv.emplace_back("HOLDFAST_TEST_SD_BOOTED=1");
    argv.push_back(kCli);
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::run(argv);
  };
  auto r = live(install_args("web", {"--user", "--now", "--linger"}, {"/bin/true"}));
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  ASSERT_TRUE(exists(home / ".config/systemd/user/holdfast-web.service")) << listing(home.path());
  const std::string user = ::getpwuid(::geteuid())->pw_name;
  std::string calls = read_file(log);
  const bool lingering = exists("/var/lib/systemd/linger/" + user);
  EXPECT_EQ(calls, std::string(lingering ? "" : "loginctl enable-linger " + user + "\n") +
                       "systemctl --user daemon-reload\n"
                       "systemctl --user start --no-block holdfast-web.service\n");
  auto s = live({"autostart", "status", "web", "--user"});
  EXPECT_EQ(s.exit_code, 0) << describe(s);
  EXPECT_NE(s.out.find("active:   active"), std::string::npos) << s.out;

  write_file(log, "");
  auto u = live({"autostart", "uninstall", "web", "--user"});
  ASSERT_EQ(u.exit_code, 0) << describe(u);
  EXPECT_NE(u.err.find("still running"), std::string::npos) << u.err;
  EXPECT_NE(u.err.find("systemctl --user stop holdfast-web.service"), std::string::npos) << u.err;
  calls = read_file(log);
  EXPECT_EQ(calls.find(" stop"), std::string::npos) << calls;
  EXPECT_NE(calls.find("systemctl --user daemon-reload\n"), std::string::npos) << calls;
  EXPECT_EQ(calls.find("disable-linger") != std::string::npos, !lingering) << calls;
  EXPECT_EQ(listing(home.path()), "");
}

// Racing installs of one NAME and of several NAMEs into one tree: every install succeeds (the
// losers of one NAME find it installed, identical), and uninstalling all leaves the tree as it was.
TEST(Autostart, ConcurrentInstallsSerialiseAndStillUninstallExactly) {
  Env env;
  TempDir root;
  write_file(root / "etc/hostname", "box\n");
  const std::string before = listing(root.path());
  constexpr int kRacers = 8;
  testing::StartGun gun;
  std::vector<pid_t> pids;
  for (int i = 0; i < kRacers; ++i) {
    const std::string name = i % 2 == 0 ? "same" : "n" + std::to_string(i);
    pids.push_back(testing::fork_child([&, name] {
      gun.wait();
      auto r = env.hf(install_args(name, {"--system", "--root", root.path()}, {"/bin/true"}));
      if (r.exit_code != 0) std::fprintf(stderr, "%s", describe(r).c_str());
      return r.exit_code;
    }));
  }
  gun.release();
  for (pid_t pid : pids) EXPECT_EQ(testing::wait_child(pid), 0);
  for (const std::string& name : std::vector<std::string>{"same", "n1", "n3", "n5", "n7"}) {
    auto s = env.hf({"autostart", "status", name, "--system", "--root", root.path()});
    EXPECT_EQ(s.exit_code, 0) << describe(s);
    auto u = env.hf({"autostart", "uninstall", name, "--system", "--root", root.path()});
    EXPECT_EQ(u.exit_code, 0) << describe(u);
  }
  EXPECT_EQ(listing(root.path()), before);
}

// The quoting functions' contracts, checked without systemd.
TEST(AutostartQuoting, WordsAndNames) {
  EXPECT_EQ(autostart::systemd_exec_word("a b"), "\"a b\"");
  EXPECT_EQ(autostart::systemd_exec_word("$HOME 5%"), "\"$$HOME 5%%\"");
  EXPECT_EQ(autostart::systemd_exec_word("q\"b\\"), "\"q\\\"b\\\\\"");
  EXPECT_EQ(autostart::systemd_exec_word(";"), "\\;");
  EXPECT_EQ(autostart::systemd_exec_word("\n\xff"), "\"\\x0a\\xff\"");
  EXPECT_EQ(autostart::cron_word("it's 5%"), "'it'\\''s 5'\\%''");
  EXPECT_EQ(autostart::unit_name("a.b-c"), "holdfast-a.b-c.service");
  EXPECT_EQ(autostart::cron_file_name("a.b_c-d"), "holdfast-a_2eb_5fc-d");
  EXPECT_NE(autostart::cron_file_name("a_2e"), autostart::cron_file_name("a.")) << "injective";
}

}  // namespace
}  // namespace holdfast
