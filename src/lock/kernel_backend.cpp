// ofd and flock backends: the kernel holds the lock; the file is only where it hangs and where the
// holder record is kept. The file is never unlinked (waiters would split across two inodes).
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "holdfast/error.hpp"
#include "lock/fence.hpp"
#include "lock/internal.hpp"
#include "sys/file.hpp"
#include "sys/kernel_lock.hpp"

namespace holdfast::lock_internal {
namespace {

sys::KernelLockKind kind_of(Backend backend) {
  return backend == Backend::flock ? sys::KernelLockKind::flock : sys::KernelLockKind::ofd;
}

// Locks `fd`, waiting as `wait` allows. Returns false if the wait ended without the lock.
bool lock_fd(int fd, const Target& target, Backend backend, bool exclusive, const WaitSpec& wait,
             const std::optional<sys::DeadlineAlarm>& alarm) {
  int attempt = 0;
  for (;;) {
    // Block in the kernel when we can be woken at the deadline; otherwise poll.
    bool block = wait.kind == WaitSpec::forever || (wait.kind == WaitSpec::until && alarm && alarm->armed());
    int rc = sys::kernel_lock(fd, kind_of(backend), exclusive, block);
    if (rc == 0) return true;
    if (rc == -EINTR) {
      if (wait.expired()) return false;
      continue;  // another signal: keep waiting until the deadline
    }
    if (rc == -EWOULDBLOCK) {
      if (!poll_sleep(wait, attempt)) return false;
      continue;
    }
    if (rc == -EINVAL || rc == -ENOLCK || rc == -EOPNOTSUPP || rc == -ENOSYS) {
      throw Error(target.path, std::string("cannot take ") + std::string(to_string(backend)) + " lock",
                  std::string(std::strerror(-rc)) + " (this filesystem may not support it; try --backend link)",
                  exit_code::unavailable);
    }
    throw Error(-rc, target.path, "cannot take lock");
  }
}

}  // namespace

std::unique_ptr<Lock::State> kernel_acquire(const Target& target, Backend backend, const LockOptions& options,
                                            const WaitSpec& wait, OpenFiles* files) {
  const bool exclusive = options.mode == LockMode::exclusive;
  std::optional<sys::DeadlineAlarm> alarm;
  if (wait.kind == WaitSpec::until) alarm.emplace(wait.deadline);

  for (;;) {
    auto state = std::make_unique<Lock::State>();
    if (files != nullptr && files->lock_fd) {
      state->borrowed_fd = files->lock_fd.get();
      state->st = files->st;
    } else {
      int fd = sys::open_nothrow(AT_FDCWD, target.path, O_RDWR | O_CREAT | O_NOCTTY | target.extra_open_flags, 0644);
      if (fd < 0) throw_open_error(-fd, target, target.path);
      sys::UniqueFd owned(fd);
      if (sys::fstat_nothrow(fd, state->st) < 0) throw Error(errno, target.path, "cannot stat lock file");
      if (!S_ISREG(state->st.st_mode)) {
        throw Error(target.path, "cannot use as lock file", "not a regular file", exit_code::cant_create);
      }
      if (files != nullptr) {
        files->lock_fd = std::move(owned);
        files->st = state->st;
        state->borrowed_fd = fd;
      } else {
        state->fd = std::move(owned);
      }
    }
    const int fd = state->descriptor();
    if (!lock_fd(fd, target, backend, exclusive, wait, alarm)) return nullptr;

    // The path may have been unlinked or replaced between our open and our lock; then we hold a
    // lock nobody else can see. Only a lock on the inode the path names now counts.
    struct stat now {};
    if (sys::stat_nothrow(target.path, now) != 0 || !sys::same_inode(state->st, now)) {
      sys::kernel_unlock(fd, kind_of(backend));
      if (files != nullptr) files->lock_fd.reset();  // reopen the path on the next round
      continue;
    }

    state->target = target;
    state->backend = backend;
    state->mode = options.mode;
    state->file_size = now.st_size;
    state->record = make_record(backend, options.mode, options);
    std::optional<fence::FenceFile> local_fence;
    auto& fence = files != nullptr ? files->fence : local_fence;
    if (!fence) fence.emplace(fence::FenceFile::open(target.path, target.extra_open_flags));
    state->held = true;  // from here on, errors release the lock through ~State's owner
    try {
      state->record.token = exclusive ? fence->next() : fence->current();
      // Shared holders leave the record alone: several of them would overwrite each other.
      if (exclusive) {
        if (int rc = write_record(fd, state->record, state->file_size); rc < 0) {
          throw Error(-rc, target.path, "cannot write holder record");
        }
      }
    } catch (...) {
      kernel_release(*state);
      throw;
    }
    return state;
  }
}

void kernel_release(Lock::State& state) {
  // Unlock explicitly before close: the open file description may be shared with children that
  // inherited it, and release() promises the lock is free when it returns.
  sys::kernel_unlock(state.descriptor(), kind_of(state.backend));
  state.fd.reset();
  state.borrowed_fd = -1;
  state.held = false;
}

}  // namespace holdfast::lock_internal
