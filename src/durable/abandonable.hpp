// Running a step that may block forever (I/O on a hung FUSE, NFS or USB filesystem) without
// letting it hold the caller past a deadline.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace holdfast::durable {

// Runs `step` on a new thread and returns its result, or nullopt if `deadline` passes first. On
// nullopt the thread is abandoned (detached): it owns everything it uses through `step`'s
// captures (capture shared_ptrs, never references to the caller's stack), finishes when the
// kernel lets it, and its result is dropped. An exception thrown by `step` is rethrown here.
template <class Result>
std::optional<Result> run_before(std::chrono::steady_clock::time_point deadline, std::function<Result()> step) {
  struct Slot {
    std::mutex mutex;
    std::condition_variable done;
    std::optional<Result> result;
    std::exception_ptr error;
    bool finished = false;
  };
  auto slot = std::make_shared<Slot>();
  std::thread worker([slot, step = std::move(step)] {
    std::optional<Result> r;
    std::exception_ptr e;
    try {
      r.emplace(step());
    } catch (...) {
      e = std::current_exception();
    }
    std::lock_guard lock(slot->mutex);
    slot->result = std::move(r);
    slot->error = e;
    slot->finished = true;
    slot->done.notify_all();
  });
  std::unique_lock lock(slot->mutex);
  // A deadline years away is "none": wait_until with time_point::max() would overflow.
  if (deadline - std::chrono::steady_clock::now() > std::chrono::hours(24 * 365)) {
    slot->done.wait(lock, [&] { return slot->finished; });
  } else {
    slot->done.wait_until(lock, deadline, [&] { return slot->finished; });
  }
  if (!slot->finished) {
    lock.unlock();
    worker.detach();
    return std::nullopt;
  }
  lock.unlock();
  worker.join();
  if (slot->error) std::rethrow_exception(slot->error);
  return std::move(slot->result);
}

}  // namespace holdfast::durable
