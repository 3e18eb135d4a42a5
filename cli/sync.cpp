// holdfast sync: flush files and their directories to stable storage.
#include <cstdio>
#include <vector>

#include "commands.hpp"
#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct SyncArgs {
  std::vector<std::string> paths;
  bool fs = false;
};
}  // namespace

Run add_sync(CLI::App& root) {
  auto args = std::make_shared<SyncArgs>();
  auto* cmd = root.add_subcommand(
      "sync",
      "Flush files and their directories to stable storage: fsync each PATH and its parent\n"
      "directory (with --fs: syncfs the whole filesystem holding PATH). Use it after a writer that\n"
      "cannot fsync (e.g. a copy to a USB drive) before telling the reader.\n"
      "Exit codes: 0 ok, 66 missing, 74 I/O error (failed fsync), 77 permission.\n"
      "All paths are attempted; the exit code is that of the first failure.");
  cmd->add_option("PATH", args->paths, "Files or directories")->required();
  cmd->add_flag("--fs", args->fs, "syncfs(2) the filesystem holding each PATH instead");
  return [args] {
    int rc = exit_code::ok;
    for (const auto& p : args->paths) {
      try {
        if (args->fs) {
          sync_filesystem(p);
        } else {
          sync_path(p);
        }
      } catch (const Error& e) {
        (void)std::fprintf(stderr, "holdfast sync: %s\n", e.what());
        if (rc == exit_code::ok) rc = e.exit_code();
      }
    }
    return rc;
  };
}

}  // namespace holdfast::cli
