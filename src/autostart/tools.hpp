// Running the system's own tools for autostart: systemctl, loginctl, crontab (found on $PATH,
// which is how the tests substitute a fake crontab).
#pragma once

#include <string>
#include <vector>

namespace holdfast::autostart {

struct ToolResult {
  int status = -1;  // exit status, or 128+signal
  std::string out;
  std::string err;
};

// True if `name` resolves on $PATH to an executable file.
bool tool_exists(const std::string& name);

// Runs argv (argv[0] looked up on $PATH) with `input` as stdin, the caller's environment with
// LC_ALL=C, and waits for it. Throws Error if it cannot be started (127/126 codes as for exec); a non-zero exit
// is returned, not thrown.
ToolResult run_tool(const std::vector<std::string>& argv, const std::string& input = "");

// The first line of `text` (for one-line error messages).
std::string first_line(const std::string& text);

}  // namespace holdfast::autostart
