// CLI11, without constructing the standard streams at every start of the command.
//
// CLI11 includes <iostream>. With libstdc++ 12 (Debian 12's), every translation unit that includes
// <iostream> holds a static std::ios_base::Init, and the first one constructed builds cin, cout,
// cerr, clog, their wide twins and the classic locale: ~50,000 instructions and a dozen page faults
// before main, in every process — `holdfast lock`, which never touches a C++ stream, included
// (docs/PERFORMANCE.md, "The command"). Newer libstdc++ does this inside the library instead.
//
// So the command's sources include CLI11 through this header: it declares the standard stream
// objects as <iostream> does, but without the static initialiser, and marks <iostream> as included.
// The streams must then be constructed before first use: main() does so (use_standard_streams())
// before it builds or runs any subcommand; `holdfast lock` never builds CLI11 nor uses a stream.
// Test CommandStart.TheLockPathConstructsNoStandardStreams checks that no static initialiser
// remains; the CLI tests check that help, usage errors and stdin-reading subcommands still work.
#pragma once

#include <ios>  // std::ios_base::Init

#if defined(__GLIBCXX__) && !defined(_GLIBCXX_IOSTREAM)
#include <istream>
#include <ostream>
#define _GLIBCXX_IOSTREAM 1  // NOLINT(bugprone-reserved-identifier): libstdc++'s own guard for <iostream>
// NOLINTBEGIN(cert-dcl58-cpp): the same declarations <iostream> makes, nothing new in std
namespace std {
extern istream cin;
extern ostream cout;
extern ostream cerr;
extern ostream clog;
extern wistream wcin;
extern wostream wcout;
extern wostream wcerr;
extern wostream wclog;
}  // namespace std
// NOLINTEND(cert-dcl58-cpp)
#endif

#include <CLI/CLI.hpp>  // IWYU pragma: export

namespace holdfast::cli {

// Constructs the standard streams (once; they stay until exit, which flushes them). Every path of
// the command that may print through a C++ stream or read std::cin calls this first.
inline void use_standard_streams() { static const std::ios_base::Init streams; }

}  // namespace holdfast::cli
