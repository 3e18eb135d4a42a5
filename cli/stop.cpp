// holdfast stop: Stop a verified instance.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_stop(CLI::App& root) {
  root.add_subcommand("stop", "Stop a verified instance (not yet implemented)");
  return [] {
    throw Error("", "stop", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
