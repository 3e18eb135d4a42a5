// holdfast probe --ensure: the daemon double-start race (implemented in cli/probe_ensure.cpp by
// the ensure issue). cli/probe.cpp parses the flags and calls this.
#pragma once

#include <string>
#include <vector>

namespace holdfast::cli {

// Starts `command` through `holdfast ensure` from `workers` racers at once, `rounds` times, and
// reports how many instances ran per round. `state_dir` is --state-dir ("" if not given).
// Returns the process exit status; throws holdfast::Error on failure.
int run_probe_ensure(int workers, int rounds, const std::vector<std::string>& command, bool json,
                     const std::string& state_dir);

}  // namespace holdfast::cli
