// The probe's race harness (harness.cpp): N worker processes forked once, all released at the
// same instant for each command through one futex word in shared memory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "holdfast/probe.hpp"

namespace holdfast::probe_internal {

enum class Phase : uint32_t { setup, prepare, go, cleanup, task, exit };

// What every worker runs on Phase::task, in the worker process: (worker index, round) -> a value
// for the parent (result(i)), e.g. the pid it was given. Exceptions become 0.
using WorkerTask = std::function<int32_t(int index, uint32_t round)>;

struct Control;
struct Slot;

class Harness {
 public:
  // Forks `workers` processes working in `scratch` (primitive races) or running `task`.
  // Throws Error if shared memory or a fork fails (the workers already forked are stopped).
  Harness(int workers, const std::string& scratch, WorkerTask task = {});
  // Stops every worker (SIGKILL after 5 s for one stuck in a hung filesystem call).
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  // Sends one command to every worker at once and waits until all have done it. Throws Error if
  // a worker died, or none answered for 60 s.
  void command(Phase phase, Primitive prim, uint32_t round);

  int32_t result(int i) const;      // 0 done / granted, else an errno; for task: the task's value
  uint32_t latency_ns(int i) const;  // of the attempt in Phase::go
  int workers() const { return workers_; }

 private:
  void stop() noexcept;

  int workers_;
  std::string scratch_;
  WorkerTask task_;
  void* mem_ = nullptr;
  size_t bytes_ = 0;
  Control* ctl_ = nullptr;
  Slot* slots_ = nullptr;
  std::vector<pid_t> pids_;
};

}  // namespace holdfast::probe_internal
