// holdfast holder: Show who holds a lock.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_holder(CLI::App& root) {
  root.add_subcommand("holder", "Show who holds a lock (not yet implemented)");
  return [] {
    throw Error("", "holder", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
