// sys/env_marker: find processes by an environment entry they inherited — how a command's
// descendants are found after they left its process group and session (setsid, daemonizing).
#pragma once

#include <string>

namespace holdfast::sys {

// SIGKILLs every process of this user whose environment contains exactly the entry `marker`
// ("KEY=VALUE"). Each candidate is pinned with a pidfd before its environment is read and
// signalled through that pidfd, so a pid reused meanwhile is never signalled. Returns how many
// were signalled. A process that cleared its environment is not found.
int kill_processes_with_env(const std::string& marker) noexcept;

}  // namespace holdfast::sys
