// holdfast write: atomically and durably replace a file with stdin, or with a command's output.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "holdfast/atomic_write.hpp"
#include "durable/write_fence.hpp"
#include "holdfast/error.hpp"
#include "lock_run.hpp"
#include "sys/fd.hpp"
#include "sys/process.hpp"
#include "sys/spawn.hpp"

extern "C" char** environ;  // unistd.h declares it only under _GNU_SOURCE

namespace holdfast::cli {

namespace {
struct WriteArgs {
  std::string path;
  std::string mode;
  bool no_sync = false;
  bool record = false;
  std::string journal;
  std::optional<uint64_t> expect_size;
  std::string expect_digest;
  std::string fence;
  bool fence_from_env = false;
  std::vector<std::string> command;
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

// Streams `fd` into the writer. Throws (after aborting the writer) on a read error.
void copy_into(int fd, AtomicWriter& writer, const std::string& what) {
  std::vector<char> buf(size_t{1} << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      writer.abort();
      throw Error(err, what, "read (target untouched)");
    }
    if (n == 0) return;
    writer.write(std::string_view(buf.data(), static_cast<size_t>(n)));
  }
}

// The producer: COMMAND with its stdout on a pipe and everything else as a shell's child has it
// (sys::spawn's like_exec: descriptors, ignored signals, this process's signal mask). Killed
// and reaped by `child`'s destructor if the copy fails.
struct Producer {
  sys::UniqueFd output;
  sys::Child child;
};

[[noreturn]] void throw_cannot_run(const std::string& name, int err) {
  throw Error(name, "run producer", std::strerror(err), err == ENOENT ? exit_code::not_found : exit_code::cannot_exec);
}

Producer start_producer(const std::vector<std::string>& command) {
  int err = 0;
  auto executable = sys::find_executable(command.front(), err);
  if (!executable) throw_cannot_run(command.front(), err);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(errno, command.front(), "pipe");
  sys::UniqueFd read_end(fds[0]);
  const sys::UniqueFd write_end(fds[1]);  // the child's copy only, once spawned: EOF when it exits
  sys::SpawnRequest request;
  request.executable = *executable;
  request.argv = command;
  for (char** e = environ; *e != nullptr; ++e) request.env.emplace_back(*e);
  request.fds = {{STDOUT_FILENO, write_end.get()}};
  request.inheritance = sys::SpawnRequest::Inheritance::like_exec;
  ::sigprocmask(SIG_SETMASK, nullptr, &request.signal_mask);
  try {
    return Producer{std::move(read_end), sys::spawn(request)};
  } catch (const sys::SpawnError& e) {
    throw_cannot_run(command.front(), e.child_errno());
  }
}
}  // namespace

Run add_write(CLI::App& root) {
  auto args = std::make_shared<WriteArgs>();
  auto* cmd = root.add_subcommand(
      "write",
      "Atomically and durably replace PATH with stdin, or with the output of COMMAND (`write PATH\n"
      "-- COMMAND ARGS...`, committed only if COMMAND exits 0): temp file in the same directory,\n"
      "fsync, rename over PATH, fsync the directory. Readers and crashes see the complete old or\n"
      "the complete new content; on failure PATH is untouched and no temp file is left. An existing\n"
      "PATH keeps its mode, owner, ACLs and extended attributes (or nothing is replaced).\n"
      "Exit codes: 0 ok, 64 usage, 65 --expect-size/--expect-digest mismatch, 66 missing directory,\n"
      "73 read-only fs / PATH is a directory, 74 I/O error (EIO, ENOSPC, failed fsync), 75 PATH\n"
      "replaced but not recorded in the journal, 77 permission / refused symlink / metadata that\n"
      "cannot be kept, 79 --fence token lower than one PATH already accepted, 126/127 COMMAND cannot\n"
      "run; COMMAND's own non-zero status (128+N for signal N) when it failed.");
  cmd->add_option("PATH", args->path, "File to replace")->required();
  cmd->add_option("COMMAND", args->command, "Producer (after --): its stdout is the new content");
  cmd->add_option("--mode", args->mode, "Octal mode for a new file (default 0666&~umask); an existing target keeps its mode");
  cmd->add_flag("--no-sync", args->no_sync, "Atomic only: skip the fsyncs (a power loss may lose the new content)");
  cmd->add_option("--expect-size", args->expect_size, "Commit only if exactly N bytes were written");
  cmd->add_option("--expect-digest", args->expect_digest, "Commit only if the content has this digest (ALG:HEX)");
  auto* fence = cmd->add_option("--fence", args->fence,
                  "Fencing token (decimal, e.g. $HOLDFAST_TOKEN from `holdfast lock`): refuse (exit 79) if PATH already "
                  "accepted a higher one; equal is accepted");
  cmd->add_flag("--fence-from-env", args->fence_from_env, "As --fence \"$HOLDFAST_TOKEN\" (exit 64 if it is unset)");
  cmd->add_flag("--record", args->record, "Record (path, size, digest, time) in the pending-write journal for `wait --pending`");
  cmd->add_option("--journal", args->journal, "Journal file (default $HOLDFAST_JOURNAL, $XDG_STATE_HOME/holdfast/pending.jsonl)");
  return [args, fence] {
    WriteOptions opts;
    opts.sync = !args->no_sync;
    if (!args->mode.empty()) opts.mode = parse_mode(args->mode, args->path);
    opts.record = args->record || !args->journal.empty();
    opts.journal = args->journal;
    opts.expect_size = args->expect_size;
    if (!args->expect_digest.empty()) {
      opts.expect_digest = Digest::parse(args->expect_digest);
      if (!opts.expect_digest) {
        throw Error(args->path, "--expect-digest " + args->expect_digest, "not ALG:HEX (e.g. sha256:<64 hex>)",
                    exit_code::usage);
      }
    }
    if (args->fence_from_env) {
      if (fence->count() > 0) {
        throw Error(args->path, "--fence-from-env", "give either --fence TOKEN or --fence-from-env", exit_code::usage);
      }
      const char* env = std::getenv("HOLDFAST_TOKEN");
      if (env == nullptr || *env == '\0') {
        throw Error(args->path, "--fence-from-env", "HOLDFAST_TOKEN is not set (run under `holdfast lock`)",
                    exit_code::usage);
      }
      args->fence = env;
    }
    if (fence->count() > 0 || args->fence_from_env) {
      opts.fence = durable::parse_fence_token(args->fence);
      if (!opts.fence) {
        throw Error(args->path, "--fence " + args->fence, "not a fencing token (decimal, 0 to 2^64-1)",
                    exit_code::usage);
      }
    }
    auto writer = AtomicWriter::open(args->path, opts);
    if (args->command.empty()) {
      copy_into(STDIN_FILENO, writer, "-");
      writer.commit();
      return exit_code::ok;
    }
    Producer producer = start_producer(args->command);
    copy_into(producer.output.get(), writer, args->command.front());
    const int status = command_exit_status(producer.child.wait());
    if (status != 0) {
      writer.abort();
      throw Error(args->path, "not replaced",
                  fmt::format("{} exited with status {} (target untouched)", args->command.front(), status), status);
    }
    writer.commit();
    return exit_code::ok;
  };
}

}  // namespace holdfast::cli
