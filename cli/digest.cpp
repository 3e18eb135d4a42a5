// holdfast digest: Print content digests.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_digest(CLI::App& root) {
  root.add_subcommand("digest", "Print content digests (not yet implemented)");
  return [] {
    throw Error("", "digest", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
