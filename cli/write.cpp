// holdfast write: Atomically and durably replace a file with stdin.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_write(CLI::App& root) {
  root.add_subcommand("write", "Atomically and durably replace a file with stdin (not yet implemented)");
  return [] {
    throw Error("", "write", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
