// holdfast: make processes coordinate correctly through the filesystem.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "holdfast/error.hpp"

int main(int argc, char** argv) {
  using namespace holdfast;
  CLI::App app{"holdfast — exact tools for processes that coordinate through the filesystem:\n"
               "locks, exactly-one instances, durable hand-offs and filesystem probes.\n"
               "Exit codes: see docs/EXIT_CODES.md (0 ok, 1 conflict/timeout, 64 usage, 65 corrupt\n"
               "record, 66 missing path, 69 unsupported/unsafe, 71 OS error, 73 cannot create,\n"
               "74 I/O error, 75 not ready in time, 77 permission, 126/127 command not runnable).",
               "holdfast"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(HOLDFAST_VERSION_STRING));

  std::vector<std::pair<CLI::App*, cli::Run>> commands;
  auto add = [&](cli::Run (*adder)(CLI::App&)) {
    auto run = adder(app);
    commands.emplace_back(app.get_subcommands({}).back(), std::move(run));
  };
  add(cli::add_lock);
  add(cli::add_holder);
  add(cli::add_probe);
  add(cli::add_ensure);
  add(cli::add_status);
  add(cli::add_stop);
  add(cli::add_write);
  add(cli::add_sync);
  add(cli::add_digest);
  add(cli::add_wait);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "holdfast: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return exit_code::usage;
  }

  for (auto& [sub, run] : commands) {
    if (!sub->parsed()) continue;
    try {
      return run();
    } catch (const Error& e) {
      std::fprintf(stderr, "holdfast %s: %s\n", sub->get_name().c_str(), e.what());
      return e.exit_code();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "holdfast %s: internal error: %s\n", sub->get_name().c_str(), e.what());
      return exit_code::software;
    }
  }
  return exit_code::usage;
}
