// holdfast wait: Wait until the reader's view of a file holds the expected content.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_wait(CLI::App& root) {
  root.add_subcommand("wait", "Wait until the reader's view of a file holds the expected content (not yet implemented)");
  return [] {
    throw Error("", "wait", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
