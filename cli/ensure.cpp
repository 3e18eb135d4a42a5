// holdfast ensure: Run exactly one instance of a command, started on demand.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_ensure(CLI::App& root) {
  root.add_subcommand("ensure", "Run exactly one instance of a command, started on demand (not yet implemented)");
  return [] {
    throw Error("", "ensure", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
