// install / uninstall / status: plan what to create from the tree as it is, record it in the
// manifest, create it; uninstall verifies every recorded thing is still as written before it
// removes anything.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "autostart/autostart.hpp"
#include "autostart/manifest.hpp"
#include "autostart/tools.hpp"
#include "holdfast/atomic_write.hpp"
#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::autostart {

namespace {

constexpr mode_t kDirMode = 0755;
constexpr mode_t kFileMode = 0644;

std::string octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode));
  return buf;
}

// The tree being changed: the live system, or a directory standing in for its root.
class Tree {
 public:
  explicit Tree(std::string root) : root_(std::move(root)) {
    while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
    if (root_ == "/") root_.clear();
  }
  bool is_live() const { return root_.empty(); }
  // Where a logical path is on this machine.
  std::string real(const std::string& path) const { return root_ + path; }

  // lstat of a logical path: 0 or -errno.
  int lstat(const std::string& path, struct stat& st) const { return sys::lstat_nothrow(real(path), st); }
  bool exists(const std::string& path) const {
    struct stat st {};
    return lstat(path, st) == 0;
  }
  std::optional<std::string> read(const std::string& path) const { return sys::read_file(real(path), 1 << 24); }
  std::optional<std::string> readlink(const std::string& path) const {
    std::string buf(4096, '\0');
    ssize_t n = ::readlink(real(path).c_str(), buf.data(), buf.size());
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }

 private:
  std::string root_;
};

std::vector<std::string> ancestors_and_self(const std::string& dir) {
  // "/a/b/c" -> "/a", "/a/b", "/a/b/c"
  std::vector<std::string> out;
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos == dir.size() || dir[pos] == '/') out.push_back(dir.substr(0, pos));
  }
  return out;
}

bool is_under(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

// What every other install of this scope (its manifests) created: shared directories are removed
// by the last install that needs them.
struct Others {
  std::set<std::string> paths;
  bool linger_enabled = false;
};

Others other_manifests(const Tree& tree, const std::string& manifest_dir, const std::string& self) {
  Others o;
  DIR* d = ::opendir(tree.real(manifest_dir).c_str());
  if (d == nullptr) return o;
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n.ends_with(".json") && n.front() != '.') names.push_back(n);
  }
  ::closedir(d);
  for (const auto& n : names) {
    const std::string path = manifest_dir + "/" + n;
    if (path == self) continue;
    auto text = tree.read(path);
    if (!text) continue;
    try {
      auto m = Manifest::parse(*text, tree.real(path));
      for (const auto& e : m.created) o.paths.insert(e.path);
      o.linger_enabled = o.linger_enabled || m.linger_enabled;
    } catch (const Error&) {
      // Another install's corrupt manifest: its status/uninstall report it; here it only means
      // we cannot count it as a user of shared directories.
    }
  }
  return o;
}

// Serialises autostart verbs on one tree: a flock on its root directory, held for the whole verb
// (planning sees what the previous verb left, and two installs of one NAME cannot interleave).
// A directory lock never changes the directory. Anyone who can read the directory can hold the
// lock, so waiting is bounded: after 30 s the verb fails (75) rather than hang.
class TreeLock {
 public:
  explicit TreeLock(const std::string& dir) {
    fd_ = sys::open_or_throw(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY, 0, "cannot open to lock");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    sys::DeadlineAlarm alarm(deadline);
    for (;;) {
      const bool block = alarm.armed();
      const int rc = sys::kernel_lock(fd_.get(), sys::KernelLockKind::flock, true, block);
      if (rc == 0) return;
      if (rc != -EINTR && rc != -EWOULDBLOCK) throw Error(-rc, dir, "cannot lock");
      if (std::chrono::steady_clock::now() >= deadline) {
        throw Error(dir, "busy", "another `holdfast autostart` holds its lock for more than 30 s", exit_code::temp_fail);
      }
      if (!block) ::usleep(20000);  // no alarm available: poll
    }
  }

 private:
  sys::UniqueFd fd_;
};

struct Context {
  Request request;
  Tree tree;
  Host host;
  Layout layout;
  Method method = Method::systemd;
  std::string manifest_path;

  std::optional<TreeLock> lock;

  explicit Context(const Request& r) : request(r), tree(r.root), host(Host::detect(r.root)) {
    validate_instance_name(r.name);
    if (!r.root.empty()) {
      struct stat st {};
      if (::stat(r.root.c_str(), &st) != 0) throw Error(errno, r.root, "--root");
      if (!S_ISDIR(st.st_mode)) throw Error(ENOTDIR, r.root, "--root");
    }
    lock.emplace(r.root.empty() ? std::string("/") : r.root);
    if (r.scope == Scope::system) {
      host.user = "root";
      host.uid = 0;
    }
    layout = Layout::for_scope(r.scope, host);
    manifest_path = layout.manifest_dir + "/" + r.name + ".json";
  }
  std::string unit_path() const { return layout.unit_dir + "/" + unit_name(request.name); }
  std::string link_path() const { return layout.wants_dir + "/" + unit_name(request.name); }
  std::string cron_path() const { return layout.cron_d + "/" + cron_file_name(request.name); }
  std::string linger_path() const { return "/var/lib/systemd/linger/" + host.user; }
  std::string crontab_label() const { return "crontab of " + host.user; }
  std::vector<std::string> systemctl(std::vector<std::string> args) const {
    std::vector<std::string> argv{"systemctl"};
    if (request.scope == Scope::user) argv.emplace_back("--user");
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  bool live_systemd() const { return tree.is_live() && host.systemd_booted; }
  bool linger_on() const { return tree.exists(linger_path()); }
  // Whether cron can run an entry of this scope on the live system: a user crontab needs
  // crontab(1); /etc/cron.d needs the directory and a cron daemon (other packages create
  // /etc/cron.d without one).
  bool cron_available() const {
    if (request.scope == Scope::user) return tool_exists("crontab");
    return tree.exists(layout.cron_d) &&
           (tool_exists("crontab") || tree.exists("/usr/sbin/cron") || tree.exists("/usr/sbin/crond"));
  }

  std::optional<Manifest> read_manifest() const {
    auto text = tree.read(manifest_path);
    if (!text) {
      if (errno == ENOENT) return std::nullopt;
      throw Error(errno, tree.real(manifest_path), "cannot read manifest");
    }
    auto m = Manifest::parse(*text, tree.real(manifest_path));
    if (m.name != request.name) {
      throw Error(tree.real(manifest_path), "corrupt manifest", "it names " + m.name, exit_code::data);
    }
    return m;
  }
};

Method choose_method(const Context& c, Output& out) {
  const Request& r = c.request;
  if (r.method != Method::automatic) {
    if (r.method == Method::systemd && c.tree.is_live() && !c.host.systemd_booted) {
      out.notes.push_back(
          "note: systemd is not the init here (/run/systemd/system is missing); the unit takes effect "
          "once it is (WSL2: [boot] systemd=true in /etc/wsl.conf, then wsl --shutdown)");
    }
    return r.method;
  }
  if (!c.tree.is_live() || c.host.systemd_booted) return Method::systemd;
  if (!c.cron_available()) {
    throw Error(r.scope == Scope::user ? std::string("crontab") : c.layout.cron_d, "no way to start at boot",
                "systemd is not the init (/run/systemd/system is missing) and cron is not installed; install "
                "cron, or make systemd the init (WSL2: [boot] systemd=true in /etc/wsl.conf), or write the unit "
                "anyway with --method systemd",
                exit_code::unavailable);
  }
  out.notes.push_back(
      "note: systemd is not the init here (/run/systemd/system is missing: a container, or WSL2 without "
      "systemd); using a cron @reboot entry instead. It needs a running cron daemon; with systemd as the "
      "init, reinstall with --method systemd.");
  return Method::cron;
}

// ---- the plan ----

struct Plan {
  Manifest manifest;                              // what will be recorded
  std::vector<Entry> steps;                       // in order; the manifest is written after
  size_t manifest_after = 0;                      //   the first `manifest_after` steps
  bool write_manifest = true;
  std::optional<std::string> crontab_new;         // the whole new crontab, when it changes
  std::vector<std::vector<std::string>> commands; // live systemd / loginctl calls
};

// Adds the directories `dir` needs (parents first): missing ones are created; existing ones
// another install created are recorded as shared (so the last user removes them).
void need_dir(const Context& c, const Others& others, const std::string& dir, const std::set<std::string>& going,
              Manifest& m, std::vector<Entry>& steps) {
  for (const auto& d : ancestors_and_self(dir)) {
    if (std::any_of(m.created.begin(), m.created.end(), [&](const Entry& e) { return e.path == d; })) continue;
    struct stat st {};
    const int rc = going.count(d) != 0 ? -ENOENT : c.tree.lstat(d, st);
    Entry e;
    e.kind = Entry::Kind::dir;
    e.path = d;
    e.mode = kDirMode;
    if (rc == 0) {
      if (!S_ISDIR(st.st_mode)) {
        throw Error(c.tree.real(d), "cannot install", "exists and is not a directory", exit_code::cant_create);
      }
      if (others.paths.count(d) == 0) continue;  // not ours: never recorded, never removed
      e.present = true;
      m.created.push_back(e);
    } else if (rc == -ENOENT) {
      m.created.push_back(e);
      steps.push_back(e);
    } else {
      throw Error(-rc, c.tree.real(d), "cannot install");
    }
  }
}

void need_file(const Context& c, const std::set<std::string>& going, Entry e, Manifest& m, std::vector<Entry>& steps) {
  if (going.count(e.path) == 0 && c.tree.exists(e.path)) {
    throw Error(c.tree.real(e.path), "cannot install",
                "exists and was not written by holdfast autostart (no manifest " + c.tree.real(c.manifest_path) +
                    "); move it away first",
                exit_code::cant_create);
  }
  if (e.kind == Entry::Kind::file) e.digest = content_digest(e.content);
  m.created.push_back(e);
  steps.push_back(std::move(e));
}

// The block in `crontab` that install wrote for NAME: the marker line and the line after it.
// Returns npos if there is no marker line.
size_t find_cron_block(const std::string& crontab, const std::string& marker, size_t& length) {
  size_t pos = 0;
  while (pos < crontab.size()) {
    size_t end = crontab.find('\n', pos);
    size_t line_end = end == std::string::npos ? crontab.size() : end + 1;
    if (crontab.compare(pos, line_end - pos, marker) == 0) {
      size_t next = crontab.find('\n', line_end);
      length = (next == std::string::npos ? crontab.size() : next + 1) - pos;
      return pos;
    }
    pos = line_end;
  }
  return std::string::npos;
}

struct CurrentCrontab {
  bool exists = false;
  std::string text;
};

CurrentCrontab read_crontab(const Context& c) {
  auto r = run_tool({"crontab", "-l"});
  if (r.status == 0) return {true, r.out};
  if (r.err.find("no crontab") != std::string::npos) return {false, ""};
  throw Error(c.crontab_label(), "crontab -l failed", first_line(r.err), exit_code::os_error);
}

Plan plan_install(const Context& c, Method method, const std::set<std::string>& going, Output& out) {
  const Request& r = c.request;
  Plan p;
  Manifest& m = p.manifest;
  m.name = r.name;
  m.scope = r.scope;
  m.method = method;
  const Others others = other_manifests(c.tree, c.layout.manifest_dir, c.manifest_path);
  need_dir(c, others, c.layout.manifest_dir, going, m, p.steps);
  p.manifest_after = p.steps.size();

  if (method == Method::systemd) {
    m.unit = unit_name(r.name);
    need_dir(c, others, c.layout.unit_dir, going, m, p.steps);
    Entry unit;
    unit.kind = Entry::Kind::file;
    unit.path = c.unit_path();
    unit.mode = kFileMode;
    unit.content = render_unit(r, c.layout);
    need_file(c, going, unit, m, p.steps);
    need_dir(c, others, c.layout.wants_dir, going, m, p.steps);
    Entry link;
    link.kind = Entry::Kind::symlink;
    link.path = c.link_path();
    link.target = unit.path;
    need_file(c, going, link, m, p.steps);
    if (r.scope == Scope::user) {
      const bool on = c.linger_on();
      if (r.linger && !on) {
        if (c.tree.is_live()) {
          p.commands.push_back({"loginctl", "enable-linger", c.host.user});
          m.linger_enabled = true;
        } else {
          // What logind itself records for a lingering user: an empty file named after them.
          need_dir(c, others, sys::dirname_of(c.linger_path()), going, m, p.steps);
          Entry f;
          f.kind = Entry::Kind::file;
          f.path = c.linger_path();
          f.mode = kFileMode;
          need_file(c, going, f, m, p.steps);
        }
      } else if (r.linger && on && c.tree.is_live() && others.linger_enabled) {
        m.linger_enabled = true;  // another install enabled it: the last one out disables it
      } else if (r.linger && on && !c.tree.is_live() && others.paths.count(c.linger_path()) != 0) {
        need_dir(c, others, sys::dirname_of(c.linger_path()), going, m, p.steps);
        Entry f;  // another install wrote it: shared, so the last one out removes it
        f.kind = Entry::Kind::file;
        f.path = c.linger_path();
        f.mode = kFileMode;
        f.digest = content_digest("");
        f.present = true;
        m.created.push_back(f);
      } else if (!on) {
        out.notes.push_back("note: lingering is off for " + c.host.user + " (" + c.tree.real(c.linger_path()) +
                            " is missing): a user unit starts at " + c.host.user +
                            "'s first login, not at boot, and stops at the last logout. Pass --linger "
                            "(runs `loginctl enable-linger " + c.host.user + "`) to start it at boot.");
      }
    }
    if (c.live_systemd()) {
      p.commands.push_back(c.systemctl({"daemon-reload"}));
      if (r.now) p.commands.push_back(c.systemctl({"start", "--no-block", m.unit}));
    }
  } else if (r.scope == Scope::system) {
    if (c.tree.is_live() && !c.cron_available()) {
      throw Error(c.layout.cron_d, "cannot install a cron entry", "cron is not installed (no cron daemon or crontab)",
                  exit_code::unavailable);
    }
    need_dir(c, others, c.layout.cron_d, going, m, p.steps);
    Entry f;
    f.kind = Entry::Kind::file;
    f.path = c.cron_path();
    f.mode = kFileMode;
    f.content = render_cron(r);
    need_file(c, going, f, m, p.steps);
  } else {
    if (!c.tree.is_live()) {
      throw Error(r.root, "--method cron --user", "a user crontab lives in cron's spool and is written with "
                  "crontab(1), which cannot target a --root tree; use --system (an /etc/cron.d file) or systemd",
                  exit_code::usage);
    }
    if (!tool_exists("crontab")) {
      throw Error("crontab", "cannot install a cron entry", "crontab(1) not found: cron is not installed",
                  exit_code::unavailable);
    }
    const std::string block = render_cron(r);
    auto cur = read_crontab(c);
    size_t len = 0;
    if (going.count("crontab") == 0 && find_cron_block(cur.text, cron_marker(r.name, r.scope), len) != std::string::npos) {
      throw Error(c.crontab_label(), "cannot install",
                  "it already has a holdfast autostart entry for " + r.name + " but there is no manifest " +
                      c.tree.real(c.manifest_path) + "; remove that entry first",
                  exit_code::cant_create);
    }
    m.crontab = true;
    m.crontab_existed = cur.exists;
    m.crontab_added_newline = !cur.text.empty() && cur.text.back() != '\n';
    m.crontab_digest = content_digest(block);
    p.crontab_new = cur.text + (m.crontab_added_newline ? "\n" : "") + block;
  }
  return p;
}

// ---- applying ----

void say(Output& out, bool dry, const std::string& what) { out.lines.push_back((dry ? "would " : "") + what); }

void show_content(Output& out, const std::string& content) {
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    out.lines.push_back("  | " + content.substr(pos, end - pos));
    pos = end + 1;
  }
}

std::string join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

void create_entry(const Tree& tree, const Entry& e, bool dry, Output& out) {
  const std::string real = tree.real(e.path);
  switch (e.kind) {
    case Entry::Kind::dir:
      say(out, dry, "create directory " + real + " (" + octal(e.mode) + ")");
      if (dry) return;
      if (::mkdir(real.c_str(), e.mode) != 0) throw Error(errno, real, "cannot create directory");
      // mkdir applies the umask; the mode recorded is the mode the directory gets.
      if (::chmod(real.c_str(), e.mode) != 0) throw Error(errno, real, "chmod");
      return;
    case Entry::Kind::file: {
      say(out, dry, "write " + real + " (" + octal(e.mode) + ")" + (e.content.empty() ? ", empty" : dry ? ":" : ""));
      if (dry) {
        show_content(out, e.content);
        return;
      }
      WriteOptions o;
      o.mode = e.mode;
      atomic_write(real, e.content, o);
      return;
    }
    case Entry::Kind::symlink:
      say(out, dry, "link " + real + " -> " + e.target);
      if (dry) return;
      if (::symlink(e.target.c_str(), real.c_str()) != 0) throw Error(errno, real, "cannot create symlink");
      return;
  }
}

void write_manifest(const Context& c, const Manifest& m, bool dry, Output& out) {
  Entry e;
  e.kind = Entry::Kind::file;
  e.path = c.manifest_path;
  e.mode = kFileMode;
  e.content = m.to_json();
  if (!dry && c.tree.exists(e.path)) {
    say(out, dry, "rewrite " + c.tree.real(e.path));
    WriteOptions o;
    o.mode = e.mode;
    atomic_write(c.tree.real(e.path), e.content, o);
    return;
  }
  create_entry(c.tree, e, dry, out);
}

void run_commands(const std::vector<std::vector<std::string>>& commands, bool dry, Output& out) {
  for (const auto& argv : commands) {
    say(out, dry, "run: " + join(argv));
    if (dry) continue;
    auto r = run_tool(argv);
    if (r.status != 0) {
      out.notes.push_back("warning: `" + join(argv) + "` failed (exit " + std::to_string(r.status) +
                          "): " + first_line(r.err));
    }
  }
}

void write_crontab(const Context& c, const std::string& text, bool remove, bool dry, Output& out) {
  if (remove) {
    say(out, dry, "run: crontab -r  (" + c.crontab_label() + " had no crontab before install)");
    if (dry) return;
    auto r = run_tool({"crontab", "-r"});
    if (r.status != 0) throw Error(c.crontab_label(), "crontab -r failed", first_line(r.err), exit_code::os_error);
    return;
  }
  say(out, dry, "run: crontab -  (" + c.crontab_label() + ") with:");
  show_content(out, text);
  if (dry) return;
  auto r = run_tool({"crontab", "-"}, text);
  if (r.status != 0) throw Error(c.crontab_label(), "crontab - failed", first_line(r.err), exit_code::os_error);
}

void apply_install(const Context& c, const Plan& p, Output& out) {
  const bool dry = c.request.dry_run;
  for (size_t i = 0; i < p.steps.size(); ++i) {
    if (i == p.manifest_after && p.write_manifest) write_manifest(c, p.manifest, dry, out);
    create_entry(c.tree, p.steps[i], dry, out);
  }
  if (p.manifest_after == p.steps.size() && p.write_manifest) write_manifest(c, p.manifest, dry, out);
  if (p.crontab_new) write_crontab(c, *p.crontab_new, false, dry, out);
  run_commands(p.commands, dry, out);
}

// ---- uninstall ----

enum class Found { as_written, changed, missing };

Found check_entry(const Tree& tree, const Entry& e) {
  struct stat st {};
  if (tree.lstat(e.path, st) != 0) return Found::missing;
  switch (e.kind) {
    case Entry::Kind::dir:
      return S_ISDIR(st.st_mode) ? Found::as_written : Found::changed;
    case Entry::Kind::symlink: {
      if (!S_ISLNK(st.st_mode)) return Found::changed;
      auto t = tree.readlink(e.path);
      return t && *t == e.target ? Found::as_written : Found::changed;
    }
    case Entry::Kind::file: {
      if (!S_ISREG(st.st_mode) || (st.st_mode & 07777) != e.mode) return Found::changed;
      auto text = tree.read(e.path);
      return text && content_digest(*text) == e.digest ? Found::as_written : Found::changed;
    }
  }
  return Found::changed;
}

void uninstall_with(const Context& c, const Manifest& m, Output& out) {
  const bool dry = c.request.dry_run;
  const Others others = other_manifests(c.tree, c.layout.manifest_dir, c.manifest_path);
  // Verify everything first: a refusal removes nothing.
  for (const auto& e : m.created) {
    if (e.kind == Entry::Kind::dir) continue;
    if (check_entry(c.tree, e) == Found::changed) {
      throw Error(c.tree.real(e.path), "not removed",
                  "changed since `holdfast autostart install` wrote it (manifest " + c.tree.real(c.manifest_path) +
                      "); nothing was removed",
                  exit_code::data);
    }
  }
  std::optional<std::string> crontab_new;
  bool crontab_remove = false;
  if (m.crontab) {
    auto cur = read_crontab(c);
    size_t len = 0;
    // The marker line depends only on NAME and scope, which the manifest fixes.
    const std::string marker = cron_marker(m.name, m.scope);
    size_t pos = find_cron_block(cur.text, marker, len);
    if (pos == std::string::npos) {
      out.notes.push_back("note: " + c.crontab_label() + " has no holdfast entry for " + m.name + " any more");
    } else {
      if (content_digest(cur.text.substr(pos, len)) != m.crontab_digest) {
        throw Error(c.crontab_label(), "not removed",
                    "the holdfast entry for " + m.name + " changed since install (manifest " +
                        c.tree.real(c.manifest_path) + "); nothing was removed",
                    exit_code::data);
      }
      std::string rest = cur.text.substr(0, pos) + cur.text.substr(pos + len);
      if (m.crontab_added_newline && pos == rest.size() && !rest.empty() && rest.back() == '\n') rest.pop_back();
      if (rest.empty() && !m.crontab_existed) {
        crontab_remove = true;
      } else {
        crontab_new = rest;
      }
    }
  }
  // Files and links (newest first), then directories deepest first; the manifest goes before the
  // directories that hold it, so an interrupted uninstall can be run again.
  for (auto it = m.created.rbegin(); it != m.created.rend(); ++it) {
    const Entry& e = *it;
    if (e.kind == Entry::Kind::dir) continue;
    if (others.paths.count(e.path) != 0) {
      say(out, dry, "keep " + c.tree.real(e.path) + " (another autostart install uses it)");
      continue;
    }
    if (check_entry(c.tree, e) == Found::missing) {
      out.notes.push_back("note: " + c.tree.real(e.path) + " was already gone");
      continue;
    }
    say(out, dry, "remove " + c.tree.real(e.path));
    if (!dry && ::unlink(c.tree.real(e.path).c_str()) != 0) throw Error(errno, c.tree.real(e.path), "cannot remove");
  }
  if (crontab_remove || crontab_new) write_crontab(c, crontab_new.value_or(""), crontab_remove, dry, out);
  std::vector<Entry> dirs;
  for (const auto& e : m.created) {
    if (e.kind == Entry::Kind::dir) dirs.push_back(e);
  }
  std::stable_sort(dirs.begin(), dirs.end(), [](const Entry& a, const Entry& b) { return a.path.size() > b.path.size(); });
  auto remove_dir = [&](const Entry& e) {
    if (others.paths.count(e.path) != 0) return;  // still used: the last install removes it
    const std::string real = c.tree.real(e.path);
    if (dry) {
      say(out, dry, "remove directory " + real + " (if empty)");
      return;
    }
    if (::rmdir(real.c_str()) == 0) {
      say(out, dry, "remove directory " + real);
    } else if (errno == ENOTEMPTY || errno == EEXIST) {
      out.notes.push_back("note: kept " + real + ": not empty (something else was put there)");
    } else if (errno != ENOENT) {
      throw Error(errno, real, "cannot remove directory");
    }
  };
  for (const auto& e : dirs) {
    if (!is_under(c.manifest_path, e.path)) remove_dir(e);
  }
  say(out, dry, "remove " + c.tree.real(c.manifest_path));
  if (!dry && ::unlink(c.tree.real(c.manifest_path).c_str()) != 0 && errno != ENOENT) {
    throw Error(errno, c.tree.real(c.manifest_path), "cannot remove");
  }
  for (const auto& e : dirs) {
    if (is_under(c.manifest_path, e.path)) remove_dir(e);
  }
  std::vector<std::vector<std::string>> commands;
  if (m.linger_enabled && c.tree.is_live() && !others.linger_enabled) {
    commands.push_back({"loginctl", "disable-linger", c.host.user});
  }
  if (m.method == Method::systemd && c.live_systemd()) {
    commands.push_back(c.systemctl({"daemon-reload"}));
    if (!dry) {
      auto r = run_tool(c.systemctl({"is-active", m.unit}));
      if (r.status == 0) {
        out.notes.push_back("note: " + m.unit + " is still running (uninstall never stops it); stop it with `" +
                            join(c.systemctl({"stop", m.unit})) + "`");
      }
    }
  }
  run_commands(commands, dry, out);
}

}  // namespace

Output install(const Request& request) {
  if (request.command.empty() && !request.external) {
    throw Error("COMMAND", "missing", "give the command after -- (or supervise --check/--start)", exit_code::usage);
  }
  if (request.holdfast_path.empty() || request.holdfast_path.front() != '/') {
    throw Error(request.holdfast_path, "holdfast path", "must be absolute", exit_code::usage);
  }
  Context c(request);
  Output out;
  const Method method = choose_method(c, out);
  auto old = c.read_manifest();
  if (!old) {
    apply_install(c, plan_install(c, method, {}, out), out);
    return out;
  }
  // What a fresh install would record, as if the old install's things were gone.
  std::set<std::string> going;
  for (const auto& e : old->created) going.insert(e.path);
  if (old->crontab) going.insert("crontab");
  Output scratch;
  Plan fresh = plan_install(c, method, going, scratch);
  if (fresh.manifest.same_install(*old)) {
    // Identical: put back whatever is missing, else nothing to do.
    Plan repair;
    repair.manifest = *old;
    repair.write_manifest = false;
    for (const auto& e : old->created) {
      if (check_entry(c.tree, e) != Found::missing) continue;
      Entry step = e;
      for (const auto& f : fresh.manifest.created) {
        if (f.path == e.path) step.content = f.content;
      }
      if (step.kind == Entry::Kind::file && step.content.empty() && !step.digest.empty() &&
          step.digest != content_digest("")) {
        continue;  // cannot happen: same_install compared digests
      }
      repair.steps.push_back(step);
    }
    if (old->crontab) {
      auto cur = read_crontab(c);
      size_t len = 0;
      const std::string block = render_cron(request);
      if (find_cron_block(cur.text, cron_marker(request.name, request.scope), len) == std::string::npos) {
        repair.crontab_new = cur.text + (!cur.text.empty() && cur.text.back() != '\n' ? "\n" : "") + block;
      }
    }
    if (repair.steps.empty() && !repair.crontab_new) {
      out.lines.push_back(request.name + ": already installed, identical (" + c.tree.real(c.manifest_path) +
                          "): nothing to do");
      return out;
    }
    repair.manifest_after = repair.steps.size();
    out.lines.push_back(request.name + ": already installed; putting back what is missing");
    apply_install(c, repair, out);
    return out;
  }
  if (!request.force) {
    throw Error(c.tree.real(c.manifest_path), "already installed differently",
                request.name + " has another " + std::string(to_string(old->method)) +
                    " install; pass --force to replace it (or uninstall first)",
                exit_code::conflict);
  }
  uninstall_with(c, *old, out);
  if (request.dry_run) {
    for (auto& note : scratch.notes) out.notes.push_back(note);
    apply_install(c, fresh, out);
  } else {
    apply_install(c, plan_install(c, method, {}, out), out);
  }
  return out;
}

Output uninstall(const Request& request) {
  Context c(request);
  Output out;
  auto m = c.read_manifest();
  if (!m) {
    out.lines.push_back(request.name + ": not installed (" + std::string(to_string(request.scope)) + "; no manifest " +
                        c.tree.real(c.manifest_path) + "): nothing to do");
    return out;
  }
  uninstall_with(c, *m, out);
  return out;
}

int status(const Request& request, Output& out) {
  Context c(request);
  auto m = c.read_manifest();
  const std::string scope(to_string(request.scope));
  if (!m) {
    out.lines.push_back(request.name + ": not installed (" + scope + "; no manifest " + c.tree.real(c.manifest_path) + ")");
    if (c.tree.exists(c.unit_path())) {
      out.lines.push_back("note: " + c.tree.real(c.unit_path()) + " exists but was not written by holdfast autostart");
    }
    return 3;
  }
  bool intact = true;
  auto describe = [&](const Entry& e) {
    switch (check_entry(c.tree, e)) {
      case Found::as_written:
        return std::string("as written");
      case Found::changed:
        intact = false;
        return std::string("CHANGED since install");
      case Found::missing:
        break;
    }
    intact = false;
    return std::string("MISSING");
  };
  out.lines.push_back(request.name + ": installed (" + scope + ", " + std::string(to_string(m->method)) + ")");
  bool enabled = false;
  for (const auto& e : m->created) {
    if (e.kind == Entry::Kind::dir) continue;
    const std::string state = describe(e);
    if (e.kind == Entry::Kind::symlink) {
      enabled = state == "as written";
      out.lines.push_back("  enabled:  " + std::string(enabled ? "yes" : "no") + " (" + c.tree.real(e.path) + " -> " +
                          e.target + ": " + state + ")");
    } else if (e.path == c.linger_path()) {
      out.lines.push_back("  linger:   " + c.tree.real(e.path) + " (" + state + ")");
    } else {
      out.lines.push_back(std::string(m->method == Method::cron ? "  entry:    " : "  unit:     ") + c.tree.real(e.path) +
                          " (" + state + ")");
      if (m->method == Method::cron) enabled = state == "as written";
    }
  }
  if (m->crontab) {
    auto cur = read_crontab(c);
    size_t len = 0;
    const std::string marker = cron_marker(m->name, m->scope);
    size_t pos = find_cron_block(cur.text, marker, len);
    std::string state = "MISSING";
    if (pos != std::string::npos) {
      state = content_digest(cur.text.substr(pos, len)) == m->crontab_digest ? "as written" : "CHANGED since install";
    }
    enabled = state == "as written";
    intact = intact && enabled;
    out.lines.push_back("  entry:    @reboot line in the " + c.crontab_label() + " (" + state + ")");
  }
  if (m->method == Method::cron) {
    out.lines.push_back("  active:   unknown (cron does not track what it started; see `holdfast status " +
                        m->name + "`)");
  } else if (!c.tree.is_live()) {
    out.lines.push_back("  active:   unknown (a --root tree)");
  } else if (!c.host.systemd_booted) {
    out.lines.push_back("  active:   unknown (no systemd)");
  } else {
    auto r = run_tool(c.systemctl({"is-active", m->unit}));
    std::string state = first_line(r.out);
    out.lines.push_back("  active:   " + (state.empty() ? "unknown (" + first_line(r.err) + ")" : state));
  }
  if (request.scope == Scope::user && m->method == Method::systemd) {
    out.lines.push_back(std::string("  linger:   ") + (c.linger_on() ? "on" : "off (the unit starts at login, not at boot)"));
  }
  out.lines.push_back("  manifest: " + c.tree.real(c.manifest_path));
  if (!enabled) intact = false;
  return intact ? 0 : 1;
}

int status_all(const Request& request, Output& out) {
  Host host = Host::detect(request.root);
  const Layout layout = Layout::for_scope(request.scope, host);
  const Tree tree(request.root);
  std::vector<std::string> names;
  if (DIR* d = ::opendir(tree.real(layout.manifest_dir).c_str())) {
    while (const dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() <= 5 || !n.ends_with(".json")) continue;
      n.resize(n.size() - 5);
      try {
        validate_instance_name(n);
        names.push_back(n);
      } catch (const Error&) {
        // not a manifest name (a temp file, say): not an install
      }
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) {
    out.lines.push_back("no autostart installs (" + std::string(to_string(request.scope)) + "; " +
                        tree.real(layout.manifest_dir) + ")");
    return 3;
  }
  int worst = 0;
  for (const auto& n : names) {
    Request r = request;
    r.name = n;
    worst = std::max(worst, status(r, out) == 0 ? 0 : 1);  // one at a time: each takes the tree lock
  }
  return worst;
}

}  // namespace holdfast::autostart
