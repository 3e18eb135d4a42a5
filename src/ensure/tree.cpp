// The instance's processes: the supervisor's descendants, found through /proc/PID/stat (which,
// unlike /proc/PID/fd, stays readable for non-dumpable processes).
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>

#include "ensure/internal.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"

namespace holdfast::ensure_detail {

namespace {

struct StatFields {
  pid_t ppid = 0;
  uint64_t start_time = 0;
  bool zombie = false;
};

// Fields 3 (state), 4 (ppid) and 22 (starttime) of /proc/PID/stat. The command name (field 2)
// may contain spaces and parentheses: parse after the last ')'.
bool read_stat(pid_t pid, StatFields& out) {
  auto text = sys::read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text) return false;
  auto close = text->rfind(')');
  if (close == std::string::npos || close + 2 >= text->size()) return false;
  const char* p = text->c_str() + close + 2;
  out.zombie = *p == 'Z' || *p == 'X';
  // After ')': field 3 is at index 0; starttime (22) at index 19.
  int field = 0;
  while (*p != '\0' && field < 19) {
    if (field == 1) out.ppid = static_cast<pid_t>(std::strtol(p, nullptr, 10));
    while (*p != '\0' && *p != ' ') ++p;
    while (*p == ' ') ++p;
    ++field;
  }
  if (field != 19) return false;
  out.start_time = std::strtoull(p, nullptr, 10);
  return true;
}

std::map<pid_t, StatFields> process_table() {
  std::map<pid_t, StatFields> table;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return table;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    StatFields f;
    // Zombies stay in the table as links: a child read a moment earlier may still name one as
    // its parent (the scan is not atomic); they are left out of the result.
    if (read_stat(static_cast<pid_t>(pid), f)) table[static_cast<pid_t>(pid)] = f;
  }
  ::closedir(d);
  return table;
}

}  // namespace

std::vector<TreeMember> descendants_of(pid_t root) {
  auto table = process_table();
  std::multimap<pid_t, pid_t> children;
  for (const auto& [pid, f] : table) children.emplace(f.ppid, pid);
  std::vector<TreeMember> out;
  std::vector<pid_t> todo{root};
  while (!todo.empty()) {
    pid_t parent = todo.back();
    todo.pop_back();
    auto [lo, hi] = children.equal_range(parent);
    for (auto it = lo; it != hi; ++it) {
      if (!table[it->second].zombie) out.push_back({it->second, table[it->second].start_time});
      todo.push_back(it->second);
    }
  }
  std::sort(out.begin(), out.end(), [](const TreeMember& a, const TreeMember& b) {
    return a.start_time != b.start_time ? a.start_time < b.start_time : a.pid < b.pid;
  });
  return out;
}

bool is_descendant(pid_t pid, pid_t root) {
  StatFields f;
  if (!read_stat(pid, f) || f.zombie) return false;
  // A chain is short; bound it anyway against a table changing under us.
  for (int depth = 0; depth < 4096; ++depth) {
    if (f.ppid == root) return true;
    if (f.ppid <= 1) return false;
    StatFields parent;
    const bool parent_read = read_stat(f.ppid, parent);
    if (!parent_read || parent.zombie) {
      // The parent is exiting or gone. The kernel reparents a process's children (to another
      // live thread of the parent's thread group, else to the nearest subreaper, e.g. root)
      // before the parent's last thread becomes a zombie, so a fresh read of `pid` names its
      // parent now. Without this, stop's TERM skipped a daemon's worker whenever the daemon died
      // of the same TERM just before the worker's check.
      StatFields again;
      if (!read_stat(pid, again) || again.zombie) return false;
      if (again.ppid != f.ppid) {
        f = again;
        continue;
      }
      // Same parent pid: a zombie thread-group leader whose other threads still run (one of
      // them is `pid`'s parent; /proc shows the group's pid). The zombie's own parent link is
      // still the group's: walk through it, as descendants_of does. Seen under TSan, whose
      // runtime gives every forked child a second thread.
      if (!parent_read) return false;
    }
    pid = f.ppid;
    f = parent;
  }
  return false;
}

int signal_descendants(pid_t root, int sig) {
  int sent = 0;
  for (const auto& m : descendants_of(root)) {
    int fd = sys::pidfd_open_nothrow(m.pid);
    if (fd < 0) continue;
    sys::UniqueFd pidfd(fd);
    // Pinned: if the pid was recycled since the scan, the new process is signalled only if it
    // too descends from root (and so belongs to the instance).
    if (!is_descendant(m.pid, root)) continue;
    if (sys::pidfd_signal_nothrow(pidfd.get(), sig) == 0) ++sent;
  }
  return sent;
}

}  // namespace holdfast::ensure_detail
