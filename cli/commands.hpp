// The holdfast command: one file per subcommand, each a thin layer over the library.
//
// Each add_X registers subcommand X on the root app (its options bound to state the function
// owns) and returns the function that runs it once parsing has succeeded. The returned int is the
// process exit status (see include/holdfast/error.hpp). Errors are thrown as holdfast::Error and
// printed by main as one line "holdfast X: PATH: CONTEXT: CAUSE".
#pragma once

#include "cli11.hpp"
#include <functional>
#include <string>
#include <vector>

namespace holdfast::cli {

using Run = std::function<int()>;

// `holdfast lock` takes its raw argv (args[0] is "lock", or "flock" when holdfast is invoked under
// that name): flock(1)-compatible parsing, see lock_args.hpp. `prog` prefixes every message.
int lock_main(const std::vector<std::string>& args, const std::string& prog);

Run add_lock(CLI::App& root);
Run add_holder(CLI::App& root);
Run add_probe(CLI::App& root);
Run add_ensure(CLI::App& root);
Run add_status(CLI::App& root);
Run add_stop(CLI::App& root);
Run add_write(CLI::App& root);
Run add_sync(CLI::App& root);
Run add_digest(CLI::App& root);
Run add_wait(CLI::App& root);
Run add_device(CLI::App& root);
Run add_autostart(CLI::App& root);
Run add_supervise(CLI::App& root);
Run add_restart(CLI::App& root);

}  // namespace holdfast::cli
