// holdfast status: Show managed instances.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_status(CLI::App& root) {
  root.add_subcommand("status", "Show managed instances (not yet implemented)");
  return [] {
    throw Error("", "status", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
