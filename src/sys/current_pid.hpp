// sys/current_pid: getpid() without a system call per use.
#pragma once

#include <sys/types.h>

namespace holdfast::sys {

// This process's pid, cached. The cache is dropped in the child of every fork() made through
// glibc (pthread_atfork), so a forked child sees its own pid. Not valid in a child made by a raw
// clone(2) system call without glibc, which holdfast never makes. A grant checks it on every
// acquisition and release (a forked child's copy must not release its parent's lock); getpid(2)
// was most of an uncontended shm grant's cost.
pid_t current_pid() noexcept;

}  // namespace holdfast::sys
