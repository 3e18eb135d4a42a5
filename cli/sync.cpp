// holdfast sync: Flush files and their directories to stable storage.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_sync(CLI::App& root) {
  root.add_subcommand("sync", "Flush files and their directories to stable storage (not yet implemented)");
  return [] {
    throw Error("", "sync", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
