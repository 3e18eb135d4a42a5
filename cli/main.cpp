// holdfast: make processes coordinate correctly through the filesystem.
#include <unistd.h>

#include "cli11.hpp"
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "hand_over.hpp"
#include "holdfast/error.hpp"

namespace {

// `holdfast lock` (and holdfast as `flock`) ends here: its lock is released or handed to the
// command, and its output is flushed below. All exit() would add is destroying static objects,
// chiefly CLI11's validators and the standard streams (~35,000 instructions, and the pages they
// touch, while each source that includes CLI11 had its own validators; docs/PERFORMANCE.md).
// Sanitizer builds leave through exit(), which runs the leak check.
[[noreturn]] void end_lock_command(int status) {
  std::fflush(nullptr);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  std::exit(status);
#else
  std::_Exit(status);
#endif
}

}  // namespace

// Everything a subcommand throws is caught below; what could still escape (std::bad_alloc while
// building the parser) ends the process with terminate's message, which is acceptable there.
int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape)
  using namespace holdfast;
  cli::keep_arguments(argv);
  // `holdfast lock` (and holdfast installed as `flock`) parse like flock(1), not through CLI11.
  const std::string_view invoked = argc > 0 ? std::string_view(argv[0]) : std::string_view();
  if (invoked.substr(invoked.rfind('/') + 1) == "flock") {
    const int status = cli::lock_main({argv, argv + argc}, "flock");
    end_lock_command(status);
  }
  if (argc > 1 && std::string_view(argv[1]) == "lock") {
    const int status = cli::lock_main({argv + 1, argv + argc}, "holdfast lock");
    end_lock_command(status);
  }
  // Every other subcommand may print through CLI11 (help, usage errors) or read std::cin.
  cli::use_standard_streams();
  CLI::App app{"holdfast — exact tools for processes that coordinate through the filesystem:\n"
               "locks, exactly-one instances, durable hand-offs and filesystem probes.\n"
               "Exit codes: see docs/EXIT_CODES.md (0 ok, 1 conflict/timeout, 64 usage, 65 corrupt\n"
               "record, 66 missing path, 69 unsupported/unsafe, 71 OS error, 73 cannot create,\n"
               "74 I/O error, 75 not ready in time, 77 permission, 126/127 command not runnable).",
               "holdfast"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(HOLDFAST_VERSION_STRING));

  // Registering a subcommand builds its whole option table; when argv names one, only that one
  // is built (a `holdfast lock` start pays for `lock` alone). Otherwise all are, for --help.
  static constexpr std::pair<const char*, cli::Run (*)(CLI::App&)> kSubcommands[] = {
      {"lock", cli::add_lock},     {"holder", cli::add_holder}, {"probe", cli::add_probe},
      {"ensure", cli::add_ensure}, {"status", cli::add_status}, {"stop", cli::add_stop},
      {"write", cli::add_write},   {"sync", cli::add_sync},     {"digest", cli::add_digest},
      {"wait", cli::add_wait},
      {"device", cli::add_device},
      {"autostart", cli::add_autostart},
      {"supervise", cli::add_supervise}, {"restart", cli::add_restart},
  };
  const std::string requested = argc > 1 ? argv[1] : "";
  const bool known = std::any_of(std::begin(kSubcommands), std::end(kSubcommands),
                                 [&](const auto& s) { return requested == s.first; });
  std::vector<std::pair<CLI::App*, cli::Run>> commands;
  for (const auto& [name, adder] : kSubcommands) {
    if (known && requested != name) continue;
    auto run = adder(app);
    commands.emplace_back(app.get_subcommands({}).back(), std::move(run));
  }

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
