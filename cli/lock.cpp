// holdfast lock: Run a command while holding a lock (flock(1)-compatible).
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_lock(CLI::App& root) {
  root.add_subcommand("lock", "Run a command while holding a lock (flock(1)-compatible) (not yet implemented)");
  return [] {
    throw Error("", "lock", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
