// Running the system's own tools (systemctl, loginctl, crontab): stdin from a buffer, stdout and
// stderr captured, through the one spawn helper.
#include "autostart/tools.hpp"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>

#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

extern char** environ;

namespace holdfast::autostart {

namespace {
// Anonymous files for the child's stdio: no pipe to fill up, so no deadlock on any output size.
sys::UniqueFd memfd(const char* name) {
  sys::UniqueFd fd(::memfd_create(name, MFD_CLOEXEC));
  if (!fd) throw Error(errno, name, "memfd_create");
  return fd;
}

std::string read_back(int fd) {
  auto text = sys::pread_all(fd);
  if (!text) throw Error(errno, "(captured output)", "read");
  return *text;
}
}  // namespace

bool tool_exists(const std::string& name) {
  int err = 0;
  return sys::find_executable(name, err).has_value();
}

ToolResult run_tool(const std::vector<std::string>& argv, const std::string& input) {
  int err = 0;
  auto exe = sys::find_executable(argv.at(0), err);
  if (!exe) throw Error(err, argv[0], "cannot run");
  auto in = memfd("stdin");
  auto out = memfd("stdout");
  auto errfd = memfd("stderr");
  if (int rc = sys::write_all(in.get(), input); rc < 0) throw Error(-rc, argv[0], "stdin");
  if (::lseek(in.get(), 0, SEEK_SET) != 0) throw Error(errno, argv[0], "stdin");
  sys::SpawnRequest req;
  req.executable = *exe;
  req.argv = argv;
  // The caller's environment, in the C locale: "no crontab for USER" is matched by its text.
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with("LC_ALL=")) continue;
    req.env.emplace_back(*e);
  }
  req.env.emplace_back("LC_ALL=C");
  req.fds = {{0, in.get()}, {1, out.get()}, {2, errfd.get()}};
  auto child = sys::spawn(req);
  const int status = child.wait();
  ToolResult r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_back(out.get());
  r.err = read_back(errfd.get());
  return r;
}

std::string first_line(const std::string& text) {
  auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

}  // namespace holdfast::autostart
