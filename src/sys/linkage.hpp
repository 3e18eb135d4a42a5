// sys/linkage: whether this process runs under the dynamic loader.
//
// The `holdfast` command is linked statically for its start-up time (docs/PERFORMANCE.md, "The
// static command"). A statically linked process must not load a shared library: dlopen would
// bring a second C library into it, which glibc supports only when both are the very same build.
// The name service is the same case: getpwnam, getgrnam and getaddrinfo of a host name load
// nsswitch.conf's modules with dlopen. The command hands what needs either to its dynamically
// linked build before doing anything else (cli/hand_over.hpp); require_dynamic_loader() is the
// check behind that hand-over, at each place that would load something.
#pragma once

#include <string_view>

namespace holdfast::sys {

// True when this process's executable was linked statically (no dynamic loader ran, and nothing
// can be loaded). A property of the link: fixed for the life of the process.
bool statically_linked() noexcept;

// Throws holdfast::Error(unavailable, 69) naming `what` ("libcurl.so.4", "the user database")
// and `purpose` when statically_linked(); returns otherwise.
void require_dynamic_loader(std::string_view what, std::string_view purpose);

}  // namespace holdfast::sys
