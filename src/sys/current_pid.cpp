#include "sys/current_pid.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>

namespace holdfast::sys {
namespace {

std::atomic<pid_t> g_pid{0};

void forget_pid() noexcept { g_pid.store(0, std::memory_order_relaxed); }

}  // namespace

pid_t current_pid() noexcept {
  pid_t pid = g_pid.load(std::memory_order_relaxed);
  if (pid != 0) return pid;
  // Registered before the first value is cached, so no fork can ever inherit a cached pid.
  static const bool registered = ::pthread_atfork(nullptr, nullptr, forget_pid) == 0;
  pid = ::getpid();
  if (registered) g_pid.store(pid, std::memory_order_relaxed);
  return pid;
}

}  // namespace holdfast::sys
