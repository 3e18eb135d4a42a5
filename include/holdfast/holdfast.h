/* holdfast C API — a stable C ABI over the holdfast library (libholdfast_c.so.1).
 *
 * For bindings from any language (the Python module `holdfast` is built on exactly this API) and
 * for C programs. Link with `pkg-config --cflags --libs holdfast-c`.
 *
 * Conventions (docs/C_API.md states the ABI policy):
 *   - Every function returns an int status: HF_OK (0) on success, a positive "no" that is not an
 *     error (HF_BUSY, HF_TIMEOUT), or HF_ERROR (-1). After HF_ERROR, hf_error_*() describe the
 *     failure on the calling thread (thread-local; valid until the next hf_* call on that thread).
 *   - No C++ exception ever crosses this boundary; allocation failure is HF_ERROR with ENOMEM.
 *   - Handles are opaque. Strings returned through `char**` out-params are NUL-terminated, owned by
 *     the caller and released with hf_free().
 *   - Timeouts are milliseconds: < 0 waits forever, 0 tries once, > 0 waits at most that long.
 *   - Symbols carry the version node HOLDFAST_C_1 (functions added later: HOLDFAST_C_1.1,
 *     HOLDFAST_C_1.2, ..., noted at each); a change that breaks a caller bumps the soname.
 */
#ifndef HOLDFAST_HOLDFAST_H
#define HOLDFAST_HOLDFAST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HOLDFAST_C_API_VERSION 5 /* 2: HOLDFAST_C_1.1 (fenced writes); 3: HOLDFAST_C_1.2 (locks on etcd); 4: HOLDFAST_C_1.3 (hf_lockfile_holder); 5: HOLDFAST_C_1.4 (ensure/status/stop on etcd) */

/* ---- status codes and errors ---- */

enum {
  HF_OK = 0,
  HF_BUSY = 1,     /* a try (timeout 0) found the lock held by another holder */
  HF_TIMEOUT = 2,  /* the deadline passed without the lock / the condition */
  HF_ERROR = -1    /* failure: see hf_error_*() */
};

/* The version of the C API this library implements (HOLDFAST_C_API_VERSION at build time). */
int hf_api_version(void);

/* After HF_ERROR: one line "PATH: CONTEXT: CAUSE" (never NULL; "" when no error). */
const char* hf_error_message(void);
/* After HF_ERROR: the path the failure concerns ("" if none). */
const char* hf_error_path(void);
/* After HF_ERROR: the errno value of a failed system call, 0 when the cause is not a syscall. */
int hf_error_errno(void);
/* After HF_ERROR: the documented exit code of the `holdfast` command for this failure
 * (docs/EXIT_CODES.md: 64 usage, 65 corrupt data, 66 missing, 69 unavailable, 73, 74, 75, 77...). */
int hf_error_exit_code(void);
/* After hf_ensure failed because the command failed before ready: its exit status (code, or
 * 128+signal), else -1. */
int hf_error_exit_status(void);
/* After hf_ensure failed because the command failed: the last lines of its log ("" otherwise). */
const char* hf_error_log_tail(void);

/* Releases a string returned through a char** out-parameter. NULL is ignored. */
void hf_free(void* pointer);

/* ---- locks (include/holdfast/lock.hpp) ---- */

/* Called after every check of a wait; return non-zero to abandon the wait (hf_wait_like then
 * returns HF_ERROR with errno EINTR). */
typedef int (*hf_cancel_fn)(void* context);

enum hf_backend { HF_BACKEND_AUTO = 0, HF_BACKEND_OFD = 1, HF_BACKEND_FLOCK = 2, HF_BACKEND_EXCL = 3, HF_BACKEND_LINK = 4, HF_BACKEND_SHM = 5 };
enum hf_lock_mode { HF_EXCLUSIVE = 0, HF_SHARED = 1 };

typedef struct hf_lockfile hf_lockfile; /* an open lock path: take the same lock many times */
typedef struct hf_lock hf_lock;         /* a held grant */

/* Opens `path` for locking with `backend` and `mode` (files are created on first acquisition).
 * Not for concurrent use by several threads at once. */
int hf_lockfile_open(const char* path, int backend, int mode, hf_lockfile** out);
/* Closes the lock path. Every hf_lock taken through it must be released first. NULL is ignored. */
void hf_lockfile_close(hf_lockfile* lockfile);
/* Takes the lock: HF_OK and *out set; HF_BUSY (timeout_ms == 0) or HF_TIMEOUT (timeout_ms > 0) if
 * another holder kept it; HF_ERROR otherwise. A blocking call (< 0) is not ended by signals; to
 * stay interruptible, call with bounded timeouts in a loop (the Python module does). */
int hf_lockfile_acquire(hf_lockfile* lockfile, int64_t timeout_ms, hf_lock** out);

/* One-shot: as hf_lockfile_acquire on a fresh hf_lockfile that the hf_lock owns. */
int hf_lock_acquire(const char* path, int backend, int mode, int64_t timeout_ms, hf_lock** out);
/* Releases the grant and frees the handle (always, even when HF_ERROR reports a failed release).
 * NULL is ignored. */
int hf_lock_release(hf_lock* lock);
/* Forgets the grant without releasing it and frees the handle: the lock stays with every process
 * that shares its descriptor — for a one-shot lock, a copy of the descriptor stays open in this
 * process too; for a lock taken through an hf_lockfile, the lock lasts while that hf_lockfile (or
 * a copy of its descriptor in another process) stays open. Meant for a child after fork(), so that
 * it never releases its parent's lock. NULL is ignored. */
void hf_lock_detach(hf_lock* lock);
/* The fencing token of the grant: strictly increasing per lock path across holders and crashes. */
uint64_t hf_lock_token(const hf_lock* lock);
/* The backend actually used (never HF_BACKEND_AUTO). */
int hf_lock_backend(const hf_lock* lock);
/* The locked descriptor (kernel backends) or a read-only descriptor of the dotlock file. */
int hf_lock_fd(const hf_lock* lock);

/* ---- locks on a remote backend: etcd (since HOLDFAST_C_1.2, API version 3; docs/ETCD.md) ---- */

/* hf_lock_backend() of a lock taken through hf_lockfile_open_url on etcd. */
#define HF_BACKEND_ETCD 6

/* Options of hf_lockfile_open_url. Set `size` to sizeof(hf_backend_options) (later versions may
 * append fields; a library reads only the fields `size` covers). Zero/NULL fields: defaults. */
typedef struct hf_backend_options {
  size_t size;
  int64_t ttl_ms;       /* lease TTL, rounded up to whole seconds; <= 0: 10 s (`holdfast lock --ttl`) */
  const char* cacert;   /* TLS: CA bundle to verify the members (https), `--cacert` */
  const char* cert;     /* TLS client certificate, `--cert` */
  const char* key;      /* its key, `--key` */
  const char* user;     /* etcd user (authentication); NULL: none */
  const char* password; /* its password */
  /* Checked about every second while hf_lockfile_acquire waits: non-zero gives up the wait
   * (HF_TIMEOUT, or HF_BUSY for a try). May be NULL. Called on the waiting thread. */
  hf_cancel_fn cancel;
  void* cancel_context;
} hf_backend_options;

/* Since HOLDFAST_C_1.2. Opens lock `name` on the backend named by `backend_url`, which takes the
 * same values as `holdfast lock --backend`: "etcd://HOST:PORT[,HOST:PORT...]/PREFIX". The lock is
 * the key PREFIX/NAME/<lease> in etcd, exactly as `holdfast lock --backend URL NAME` and
 * `etcdctl lock PREFIX/NAME` take it, so all three exclude each other. Only HF_EXCLUSIVE.
 * `options` may be NULL. Nothing is contacted before hf_lockfile_acquire. A grant taken through it
 * (hf_lockfile_acquire; timeouts as for files, waiting FIFO in etcd) has:
 *   hf_lock_token()   its fencing token (the key's create revision, strictly increasing),
 *   hf_lock_backend() HF_BACKEND_ETCD,
 *   hf_lock_fd()      a descriptor that becomes readable once the lock is LOST: the lease could
 *                     not be renewed before it may have expired. The caller must then stop
 *                     acting as the holder (nothing stops it for you, unlike the command).
 * hf_lock_release() deletes the key (guarded on the token) and revokes the lease; hf_lock_detach()
 * (after fork, in the child) forgets the grant, leaving it to the parent. Errors: exit codes as for
 * the command (69 unreachable, 76 TLS/protocol, 77 auth/permission, 90 lost while waiting). */
int hf_lockfile_open_url(const char* backend_url, const char* name, int mode, const hf_backend_options* options,
                         hf_lockfile** out);

enum hf_holder_state { HF_HOLDER_FREE = 0, HF_HOLDER_HELD = 1, HF_HOLDER_STALE = 2 };
/* Who holds `path`, without taking the lock. *state is an hf_holder_state; if json is not NULL,
 * *json is one JSON object {"state","backend","kernel_lock_held","kernel_lock_kinds","reason",
 * "record_corrupt","record"} where "record" is the holder record (docs/LOCKS.md) or null. */
int hf_holder(const char* path, int* state, char** json);
/* Since HOLDFAST_C_1.3 (API version 4). As hf_holder, for the lock `lockfile` names: its path
 * (exactly hf_holder), or a name on etcd (hf_lockfile_open_url; HF_HOLDER_FREE or HF_HOLDER_HELD,
 * from one linearizable read, as `holdfast holder --backend URL NAME`). For etcd, *json has
 * hf_holder's fields ("backend" "etcd", "kernel_lock_held" false; "record" null if the key's value
 * is no holdfast record, e.g. etcdctl lock's) plus "key", "token" (the holder's fencing token),
 * "lease" (hex), "ttl_remaining_s" and "waiters", as `holdfast holder --json --backend`. Errors on
 * etcd: as hf_lockfile_acquire's (69, 76, 77). */
int hf_lockfile_holder(const hf_lockfile* lockfile, int* state, char** json);

/* ---- ensure: exactly one instance (include/holdfast/ensure.hpp) ---- */

typedef struct hf_instance {
  int32_t pid;          /* the daemon */
  uint64_t start_time;  /* its start time (/proc/PID/stat field 22) */
  int ready;            /* 1 if verified ready */
  int started;          /* 1 if this call spawned it */
  int64_t waited_ns;    /* time spent in hf_ensure */
} hf_instance;

/* Ensures exactly one instance `name` runs argv (NULL-terminated; argv[0] looked up in PATH) and is
 * ready. `ready` is "none", "notify", "fd:N", "tcp:HOST:PORT", "unix:PATH" or "file:PATH" (NULL =
 * "none"); `state_dir` NULL or "" = the default. HF_TIMEOUT if not ready within timeout_ms (the
 * instance keeps starting); HF_ERROR with hf_error_exit_status()/hf_error_log_tail() if it failed
 * before ready. If record_json is not NULL, *record_json receives the instance record as JSON. */
int hf_ensure(const char* name, const char* const* argv, const char* ready, int64_t timeout_ms,
              const char* state_dir, hf_instance* out, char** record_json);

/* READY: lock held, record ready and verified. RUNNING: lock held, starting. STOPPED: lock free,
 * no record or it says stopped/failed. STALE: lock free but the record says it runs (died without
 * cleanup). UNKNOWN: lock held but the record does not verify (never signalled). Callers must
 * treat values they do not know as UNKNOWN. */
enum hf_instance_state {
  HF_INSTANCE_READY = 0,
  HF_INSTANCE_RUNNING = 1,
  HF_INSTANCE_STOPPED = 2,
  HF_INSTANCE_STALE = 3,
  HF_INSTANCE_UNKNOWN = 4
};
/* The status of instance `name` (takes no lock). *state is an hf_instance_state; if json is not
 * NULL, *json is {"name","state","lock_held","reason","record"} with "record" the record or null. */
int hf_status(const char* name, const char* state_dir, int* state, char** json);

typedef struct hf_stop_result {
  int was_running;  /* an instance held the lock */
  int32_t pid;      /* the process signalled, 0 if none */
  int killed;       /* SIGKILL was sent */
} hf_stop_result;

/* Stops the verified instance with `signal` (0 = SIGTERM) and waits up to timeout_ms (< 0: 10 s)
 * for its lock to be released; kill_after_ms >= 0 sends SIGKILL after that long. Never signals a
 * process that does not verify against the record and the held lock. HF_TIMEOUT if it still runs. */
int hf_stop(const char* name, const char* state_dir, int signal, int64_t timeout_ms, int64_t kill_after_ms,
            hf_stop_result* out);

/* ---- ensure on a remote backend: one instance across machines on etcd (since HOLDFAST_C_1.4, API
 * version 5; docs/ETCD.md, "ensure, status and stop on etcd") ----
 *
 * `backend_url` and `options` as hf_lockfile_open_url's ("etcd://HOST:PORT[,HOST:PORT...]/PREFIX";
 * options may be NULL; its ttl_ms, TLS files, user and password are used, `cancel` is not). The
 * instance is a local ensure instance (state_dir as hf_ensure's) whose main process is
 * `holdfast lock -n --backend URL NAME -- ARGV...`, which holds NAME in etcd for the instance's life
 * and stops ARGV when its lease may have expired. That holdfast command is $HOLDFAST_CLI if set,
 * else `holdfast` in $PATH (neither: HF_ERROR, exit code 127, nothing started). Hosts are told
 * apart by hostname. Errors talking to etcd: exit codes 69, 76, 77 as for hf_lockfile_acquire. */

/* As hf_ensure, for exactly one instance across the machines sharing the etcd prefix. If no host
 * runs NAME, it is started here (ready "none" = ready once NAME is held in etcd); if this host
 * runs it, that instance is returned (started 0). If ANOTHER host runs it (already, or it won the
 * race), nothing is started: HF_OK with out->pid and out->start_time of that host's lock process
 * (for information only), ready 0 and started 0. *json (if json is not NULL) is the object
 * `holdfast ensure --json --backend` prints: here, the instance record plus "backend" "etcd",
 * "started", "token" (the etcd holder's fencing token) and "local" true; elsewhere, "host", "pid",
 * "token", "key", "lease", "ttl_remaining_s", "record" (the etcd key's record), "started" false and
 * "local" false. */
int hf_ensure_url(const char* backend_url, const char* name, const char* const* argv, const char* ready,
                  int64_t timeout_ms, const char* state_dir, const hf_backend_options* options, hf_instance* out,
                  char** json);

/* Who runs NAME, from one linearizable read of etcd. *state: HF_INSTANCE_STOPPED if no host holds
 * NAME; HF_INSTANCE_READY if the holder is this host's instance of `state_dir` (its main process is
 * the lease's keeper) and that instance is ready; HF_INSTANCE_RUNNING otherwise (another host, or
 * not verifiable as this state directory's). *json (if not NULL) is the object `holdfast status
 * --json --backend` prints: "name", "backend" "etcd", "host" (null when not running), "pid",
 * "token", "key", "lease", "ttl_remaining_s", "record", "local" (true if "host" is this host). */
int hf_status_url(const char* backend_url, const char* name, const char* state_dir,
                  const hf_backend_options* options, int* state, char** json);

/* As hf_stop, for NAME on etcd; never signals a process it has not verified. Not running: HF_OK,
 * was_running 0. Run by ANOTHER host: HF_ERROR, hf_error_exit_code() 65 and a message naming that
 * host, nothing signalled (stop it there). On this host, only the instance of `state_dir` that is
 * the etcd holder is stopped (hf_stop), else HF_ERROR with exit code 65; its lock process then
 * releases NAME. */
int hf_stop_url(const char* backend_url, const char* name, const char* state_dir, int signal, int64_t timeout_ms,
                int64_t kill_after_ms, const hf_backend_options* options, hf_stop_result* out);

/* ---- durable hand-off (atomic_write.hpp, wait.hpp, digest.hpp) ---- */

/* Atomically replaces `path` with `data` (fsync'd unless sync == 0). mode < 0: 0666 & ~umask for a
 * new file; an existing file always keeps its mode. */
int hf_write(const char* path, const void* data, size_t size, int sync, int mode);

/* hf_error_exit_code() after a fenced write was refused: `holdfast write --fence` exits with it. */
#define HF_EXIT_FENCED 79

/* Since HOLDFAST_C_1.1 (API version 2). As hf_write, fenced with `token` (the grant's
 * hf_lock_token(), like `holdfast write --fence TOKEN`): replaces `path` only if `token` is >= the
 * highest token `path` has accepted, and records it. Otherwise `path` is untouched and this returns
 * HF_ERROR with hf_error_exit_code() == HF_EXIT_FENCED and a message naming the path and both
 * tokens: a newer lock holder already wrote it, so a paused ex-holder cannot overwrite its work.
 * Fenced writers of one path (C, Python, the command) serialise on one record (docs/DURABLE.md,
 * "Fenced writes"). */
int hf_write_fenced(const char* path, const void* data, size_t size, int sync, int mode, uint64_t token);
/* Since HOLDFAST_C_1.1. The highest fencing token `path` has accepted into *token (0 if none). */
int hf_accepted_fence(const char* path, uint64_t* token);

/* hf_cancel_fn (a wait's cancel callback) is declared with the lock types above. */

/* Waits until the reader's view of `path` holds exactly the content of `like` (size and digest).
 * `via` NULL/"" observes the local path, else a shell command printing the reader's view of $1.
 * interval_ms <= 0: 500 ms. HF_OK when matched, HF_TIMEOUT otherwise (then, if difference is not
 * NULL, *difference names what still differs). cancel may be NULL. */
int hf_wait_like(const char* path, const char* like, int64_t timeout_ms, int64_t interval_ms, const char* via,
                 hf_cancel_fn cancel, void* cancel_context, char** difference);

/* "ALG:HEX" of the file at `path` ("xxh128" or "sha256"; NULL = xxh128) into *digest; *size (if
 * not NULL) receives the bytes hashed. */
int hf_digest_file(const char* path, const char* alg, char** digest, uint64_t* size);
/* "ALG:HEX" of `size` bytes at `data`. */
int hf_digest_bytes(const void* data, size_t size, const char* alg, char** digest);

#ifdef __cplusplus
}
#endif

#endif /* HOLDFAST_HOLDFAST_H */
