// The statically linked `holdfast` hands an invocation to its dynamically linked build.
//
// `holdfast` is linked statically: no dynamic loader runs at its start, which is most of what a
// `holdfast lock F -- true` costs beyond flock(1) (docs/PERFORMANCE.md, "The static command").
// What a static process cannot do (sys/linkage.hpp) — load libcurl for the etcd backend, ask the
// name service for a user, a group or a host — the same command does as `holdfast-dynamic`,
// linked dynamically from the same objects. It is installed in LIBEXECDIR/holdfast and found
// beside `holdfast` in a build tree.
#pragma once

#include <string>
#include <string_view>

namespace holdfast::cli {

// Keeps main's argv (argv[0] included: `flock` is a personality) for hand_over_if_static(), and
// takes HOLDFAST_HANDED_OVER_BY out of the environment (see public_executable()): the command's
// children never see it.
void keep_arguments(char** argv);

// The path of this process's executable (/proc/self/exe): holdfast-dynamic after a hand-over,
// which is what a process that must load libcurl (the etcd backend's keeper) has to run. Throws
// holdfast::Error if it cannot be read.
std::string this_executable();

// The path of the `holdfast` the user ran: in holdfast-dynamic after a hand-over, the static
// command's (which passes it in HOLDFAST_HANDED_OVER_BY); otherwise this process's executable.
// What names holdfast to run later (a boot unit's ExecStart) names this one. Throws
// holdfast::Error if /proc/self/exe cannot be read.
std::string public_executable();

// In the statically linked `holdfast`: replaces this process with holdfast-dynamic by execv(2),
// the same arguments and environment, so the invocation runs there from its start with the same
// pid, descriptors, signal dispositions and mask. `need` ("the etcd backend") says why, in the
// error. Call it before the command has had any effect: nothing done here is undone. Returns at
// once in a dynamically linked holdfast. Throws holdfast::Error(unavailable, 69) naming the
// path when holdfast-dynamic cannot be found or executed.
void hand_over_if_static(std::string_view need);

}  // namespace holdfast::cli
