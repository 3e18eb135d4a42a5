// holdfast probe: Measure whether this filesystem's primitives are atomic.
#include "commands.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

Run add_probe(CLI::App& root) {
  root.add_subcommand("probe", "Measure whether this filesystem's primitives are atomic (not yet implemented)");
  return [] {
    throw Error("", "probe", "not yet implemented", exit_code::software);
    return 0;
  };
}

}  // namespace holdfast::cli
