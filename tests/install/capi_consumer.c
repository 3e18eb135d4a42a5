/* A plain C11 program using the installed C API (holdfast.h, libholdfast_c) through pkg-config.
 * Built by tests/install/consumer.sh with -std=c11 -Wall -Werror. Exercises every group of the
 * API once and exits non-zero, naming the check, on the first failure. Usage: capi_consumer DIR */
#include <holdfast/holdfast.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                                       \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond,   \
              hf_error_message());                                                        \
      ++failures;                                                                         \
    }                                                                                     \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  char path[4096], other[4096], state[4096];
  snprintf(path, sizeof path, "%s/c.lock", argv[1]);
  snprintf(other, sizeof other, "%s/data", argv[1]);
  snprintf(state, sizeof state, "%s/state", argv[1]);

  CHECK(hf_api_version() == HOLDFAST_C_API_VERSION);

  /* lock: acquire, try from a second open (excluded), timed, release, token, holder */
  hf_lockfile* file = NULL;
  CHECK(hf_lockfile_open(path, HF_BACKEND_FLOCK, HF_EXCLUSIVE, &file) == HF_OK);
  hf_lock* lock = NULL;
  CHECK(hf_lockfile_acquire(file, -1, &lock) == HF_OK && lock != NULL);
  uint64_t first_token = hf_lock_token(lock);
  CHECK(first_token > 0);
  CHECK(hf_lock_backend(lock) == HF_BACKEND_FLOCK);
  CHECK(hf_lock_fd(lock) >= 0);
  hf_lock* second = NULL;
  CHECK(hf_lock_acquire(path, HF_BACKEND_FLOCK, HF_EXCLUSIVE, 0, &second) == HF_BUSY && second == NULL);
  CHECK(hf_lock_acquire(path, HF_BACKEND_FLOCK, HF_EXCLUSIVE, 50, &second) == HF_TIMEOUT && second == NULL);
  int holder_state = -1;
  char* json = NULL;
  CHECK(hf_holder(path, &holder_state, &json) == HF_OK);
  CHECK(holder_state == HF_HOLDER_HELD);
  CHECK(json != NULL && strstr(json, "\"record\"") != NULL);
  hf_free(json);
  CHECK(hf_lock_release(lock) == HF_OK);
  CHECK(hf_lock_acquire(path, HF_BACKEND_FLOCK, HF_EXCLUSIVE, 0, &second) == HF_OK);
  CHECK(hf_lock_token(second) > first_token);
  CHECK(hf_lock_release(second) == HF_OK);
  hf_lockfile_close(file);

  /* errors: integer code plus a one-line message naming the path; no exception escapes */
  hf_lock* none = NULL;
  CHECK(hf_lock_acquire("/nonexistent-dir/x.lock", HF_BACKEND_FLOCK, HF_EXCLUSIVE, 0, &none) == HF_ERROR);
  CHECK(strstr(hf_error_message(), "/nonexistent-dir") != NULL);
  CHECK(hf_error_exit_code() == 66);
  CHECK(hf_lock_acquire(path, 99, HF_EXCLUSIVE, 0, &none) == HF_ERROR && hf_error_exit_code() == 64);

  /* atomic write + digest */
  CHECK(hf_write(other, "hello", 5, 1, -1) == HF_OK);
  char* digest = NULL;
  uint64_t size = 0;
  CHECK(hf_digest_file(other, "sha256", &digest, &size) == HF_OK);
  CHECK(size == 5);
  CHECK(digest != NULL &&
        strcmp(digest, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824") == 0);
  hf_free(digest);
  CHECK(hf_digest_bytes("hello", 5, NULL, &digest) == HF_OK && strncmp(digest, "xxh128:", 7) == 0);
  hf_free(digest);
  CHECK(hf_digest_file("/nonexistent-file", NULL, &digest, NULL) == HF_ERROR && hf_error_errno() == ENOENT);

  /* fenced write (HOLDFAST_C_1.1; consumer.sh points HOLDFAST_STATE_DIR into DIR): an older token
   * is refused with the command's exit code, the newer content stays */
  uint64_t accepted = 1;
  CHECK(hf_write_fenced(other, "newer", 5, 1, -1, 8) == HF_OK);
  CHECK(hf_write_fenced(other, "older", 5, 1, -1, 7) == HF_ERROR && hf_error_exit_code() == HF_EXIT_FENCED);
  CHECK(strstr(hf_error_message(), other) != NULL);
  CHECK(hf_accepted_fence(other, &accepted) == HF_OK && accepted == 8);
  CHECK(hf_write(other, "hello", 5, 1, -1) == HF_OK);

  /* wait: the file already looks like itself */
  char* difference = NULL;
  CHECK(hf_wait_like(other, other, 5000, 0, NULL, NULL, NULL, &difference) == HF_OK);
  hf_free(difference);

  /* ensure / status / stop */
  const char* daemon[] = {"sleep", "600", NULL};
  hf_instance instance;
  CHECK(hf_ensure("capi-test", daemon, "none", 30000, state, &instance, NULL) == HF_OK);
  CHECK(instance.pid > 0 && instance.started == 1 && instance.ready == 1);
  hf_instance again;
  CHECK(hf_ensure("capi-test", daemon, "none", 30000, state, &again, NULL) == HF_OK);
  CHECK(again.pid == instance.pid && again.started == 0);
  int instance_state = -1;
  CHECK(hf_status("capi-test", state, &instance_state, NULL) == HF_OK && instance_state == HF_INSTANCE_READY);
  hf_stop_result stopped;
  CHECK(hf_stop("capi-test", state, 0, 10000, -1, &stopped) == HF_OK);
  CHECK(stopped.was_running == 1 && stopped.pid == instance.pid);
  CHECK(hf_status("capi-test", state, &instance_state, NULL) == HF_OK &&
        (instance_state == HF_INSTANCE_STOPPED || instance_state == HF_INSTANCE_STALE));
  CHECK(hf_ensure("bad name!", daemon, "none", 1000, state, &instance, NULL) == HF_ERROR &&
        hf_error_exit_code() == 64);

  if (failures == 0) printf("C API consumer: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
