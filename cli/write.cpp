// holdfast write: atomically and durably replace a file with stdin.
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "commands.hpp"
#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"

namespace holdfast::cli {

namespace {
struct WriteArgs {
  std::string path;
  std::string mode;
  bool no_sync = false;
  bool record = false;
  std::string journal;
};

mode_t parse_mode(const std::string& text, const std::string& path) {
  size_t used = 0;
  unsigned long v = 0;
  try {
    v = std::stoul(text, &used, 8);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v > 07777) {
    throw Error(path, "--mode " + text, "not an octal mode (e.g. 0644)", exit_code::usage);
  }
  return static_cast<mode_t>(v);
}
}  // namespace

Run add_write(CLI::App& root) {
  auto args = std::make_shared<WriteArgs>();
  auto* cmd = root.add_subcommand(
      "write",
      "Atomically and durably replace PATH with stdin: temp file in the same directory, fsync,\n"
      "rename over PATH, fsync the directory. Readers and crashes see the complete old or the\n"
      "complete new content; on failure PATH is untouched and no temp file is left.\n"
      "Exit codes: 0 ok, 64 usage, 66 missing directory, 73 read-only fs / PATH is a directory,\n"
      "74 I/O error (EIO, ENOSPC, failed fsync), 77 permission / refused symlink.");
  cmd->add_option("PATH", args->path, "File to replace")->required();
  cmd->add_option("--mode", args->mode, "Octal mode for a new file (default 0666&~umask); an existing target keeps its mode");
  cmd->add_flag("--no-sync", args->no_sync, "Atomic only: skip the fsyncs (a power loss may lose the new content)");
  cmd->add_flag("--record", args->record, "Record (path, size, digest, time) in the pending-write journal for `wait --pending`");
  cmd->add_option("--journal", args->journal, "Journal file (default $HOLDFAST_JOURNAL, $XDG_STATE_HOME/holdfast/pending.jsonl)");
  return [args] {
    WriteOptions opts;
    opts.sync = !args->no_sync;
    if (!args->mode.empty()) opts.mode = parse_mode(args->mode, args->path);
    opts.record = args->record || !args->journal.empty();
    opts.journal = args->journal;
    auto writer = AtomicWriter::open(args->path, opts);
    std::vector<char> buf(size_t{1} << 20);
    for (;;) {
      ssize_t n = ::read(STDIN_FILENO, buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        writer.abort();
        throw Error(err, "-", "read stdin (target untouched)");
      }
      if (n == 0) break;
      writer.write(std::string_view(buf.data(), static_cast<size_t>(n)));
    }
    writer.commit();
    return exit_code::ok;
  };
}

}  // namespace holdfast::cli
