// holdfast::EtcdLock — a lock shared by processes on several machines, held in an etcd (v3)
// cluster, with a fencing token per grant and a deadline after which the holder must assume it
// has lost the lock. See docs/ETCD.md for the algorithm and exactly what is guaranteed.
//
// The algorithm is etcd's own concurrency.Mutex (so `etcdctl lock PREFIX/NAME` and holdfast
// exclude each other): each contender creates PREFIX/NAME/<lease id in hex> bound to its lease;
// the one with the lowest create revision holds the lock; every other waits, with a watch, for
// the deletion of the key just before its own (FIFO by create revision, no herd, no polling).
// Beyond etcdctl:
//   * after the wait, the key is read back: it must still exist with our create revision, and our
//     lease must be alive (etcd 3.4 can return a lock to a waiter whose lease expired, etcd#9921);
//   * the fencing token is the key's create revision: strictly increasing across grants of a name;
//   * release is a transaction guarded on that create revision, never a plain delete (a retried
//     delete could remove a newer holder's key, etcd#22082);
//   * the lease is renewed every TTL/3; an answer without a TTL means it is gone. The lock is
//     *lost* once no renewal succeeded early enough to be sure the lease is still alive:
//     valid_until() = send time of the last successful renewal + TTL - margin (local monotonic
//     clock). lost_fd() becomes readable then.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"

namespace holdfast {

// How to reach a cluster and where the locks live.
struct EtcdOptions {
  std::vector<std::string> endpoints;  // "host:port", tried in order, failing over
  std::string prefix;                  // key prefix, without a trailing '/'
  // TLS (https) when any of these is set: CA bundle to verify the server, client certificate+key.
  std::string cacert, cert, key;
  // Authentication (etcd's /v3/auth/authenticate); empty user: none.
  std::string user, password;
  std::chrono::seconds ttl{10};        // lease TTL (etcd raises values below its minimum)
  std::chrono::milliseconds request_timeout{5000};  // per request, across endpoint failover
  // Checked while waiting (about every second): true makes acquire give up and return nullopt.
  std::function<bool()> cancel;
};

// "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" (PREFIX may contain '/'; it may be empty).
bool is_etcd_url(std::string_view text) noexcept;
// Parses such a URL into endpoints and prefix; the other fields keep their defaults. Throws
// Error(exit_code::usage) for anything else.
EtcdOptions parse_etcd_url(std::string_view url);

// An error talking to etcd. The exit codes (docs/EXIT_CODES.md): unreachable 69, tls 76,
// auth/permission 77, protocol/server 76, lost 90.
class EtcdError : public Error {
 public:
  enum class Kind { unreachable, tls, auth, permission, server, protocol, lost };
  EtcdError(Kind kind, const std::string& where, const std::string& context, const std::string& cause,
            int grpc_code = 0);
  Kind kind() const noexcept { return kind_; }
  int grpc_code() const noexcept { return grpc_code_; }
  static int exit_code_of(Kind kind) noexcept;

 private:
  Kind kind_;
  int grpc_code_;
};

class EtcdLock;

// One lease kept alive (a thread renews it every TTL/3) across many grants, with one connection:
// etcd's concurrency.Session. A grant taken through it costs two transactions (enqueue, guarded
// delete) instead of also a lease grant and revoke each. Every lock taken through a session is
// lost when its lease is (lost(), lost_fd()). A session and the locks taken through it are used by
// one thread at a time. A name can be held or awaited once per session at a time (its key is
// PREFIX/NAME/<lease>): a second acquire of it through the same session throws Error(usage).
class EtcdSession {
 public:
  // Grants the lease. Throws EtcdError.
  explicit EtcdSession(const EtcdOptions& options);
  EtcdSession(EtcdSession&&) noexcept;
  EtcdSession& operator=(EtcdSession&&) noexcept;
  EtcdSession(const EtcdSession&) = delete;
  EtcdSession& operator=(const EtcdSession&) = delete;
  // Revokes the lease (which deletes every key still bound to it) once the session and every lock
  // taken through it are gone (a lock keeps its session's lease and connection alive). Errors are
  // ignored: the lease then expires within its TTL.
  ~EtcdSession();

  int64_t lease_id() const noexcept;
  bool lost() const noexcept;
  int lost_fd() const noexcept;

  struct Impl;

 private:
  friend class EtcdLock;
  std::shared_ptr<Impl> impl_;
};

class EtcdLock {
 public:
  // As below, through `session`'s lease and connection: nothing else is sent than the enqueue
  // transaction (and, for a waiter, its reads and watch). Every path that does not return a lock
  // has deleted its key (guarded on its create revision). release() deletes the key only.
  static std::optional<EtcdLock> acquire(EtcdSession& session, const std::string& name, const std::string& record,
                                         bool nonblock,
                                         std::optional<std::chrono::steady_clock::time_point> deadline);

  // Blocks until NAME is held (FIFO among waiters), or `deadline` passes (nullopt), or — with
  // `nonblock` — returns nullopt at once if another holder has it. `record` is stored as the
  // key's value (a holder record: who and where). Throws EtcdError when the cluster cannot be
  // used, and EtcdError(lost) when our lease expired while waiting. Every path that does not
  // return a lock has revoked its lease (so its queue key is gone).
  static std::optional<EtcdLock> acquire(const EtcdOptions& options, const std::string& name,
                                         const std::string& record, bool nonblock,
                                         std::optional<std::chrono::steady_clock::time_point> deadline);

  EtcdLock(EtcdLock&&) noexcept;
  EtcdLock& operator=(EtcdLock&&) noexcept;
  EtcdLock(const EtcdLock&) = delete;
  EtcdLock& operator=(const EtcdLock&) = delete;
  // Releases if still held (errors ignored: the lease then expires by itself).
  ~EtcdLock();

  // Deletes our key if it still has our create revision (one guarded txn), then revokes the
  // lease. Throws EtcdError if etcd cannot be reached (the lease then expires within its TTL).
  void release();
  // Replaces the key's value with `record`, only if the key is still ours. False if it is not.
  bool update_record(const std::string& record);

  uint64_t token() const noexcept;      // the key's create revision
  const std::string& key() const noexcept;
  int64_t lease_id() const noexcept;
  std::chrono::seconds ttl() const noexcept;  // as granted by etcd
  std::chrono::milliseconds margin() const noexcept;
  // Until then, the lease is alive (given the clock-rate assumption in docs/ETCD.md).
  std::chrono::steady_clock::time_point valid_until() const noexcept;
  bool lost() const noexcept;
  std::string lost_reason() const;
  // Readable (an eventfd) once the lock is lost.
  int lost_fd() const noexcept;

  struct State;

 private:
  explicit EtcdLock(std::unique_ptr<State> state) noexcept;
  static std::optional<EtcdLock> enqueue_and_wait(std::unique_ptr<State> state, const std::string& record,
                                                  bool nonblock,
                                                  std::optional<std::chrono::steady_clock::time_point> deadline);
  std::unique_ptr<State> state_;
};

// Who holds NAME, read linearizably without taking it.
struct EtcdHolder {
  bool held = false;
  std::string key;
  uint64_t token = 0;        // create revision of the holder's key
  int64_t lease_id = 0;
  int64_t ttl_remaining = -1;  // seconds, from /v3/lease/timetolive (-1 unknown)
  std::string record;          // the key's value
  size_t waiters = 0;          // keys queued behind the holder
};
EtcdHolder inspect_etcd_holder(const EtcdOptions& options, const std::string& name);
// `holdfast holder --json --backend URL NAME`'s object for `holder`: {"path","backend":"etcd",
// "state":"held"|"free"} and, when held, {"key","token","lease" (hex),"ttl_remaining_s","waiters",
// "record"} where "record" is the key's value parsed as JSON (as a string if it is not JSON, e.g.
// an etcdctl lock's empty value). The command and the C/Python API both print this.
std::string etcd_holder_json(const std::string& name, const EtcdHolder& holder);

// ---- ensure, status and stop on etcd: one instance across machines (docs/ETCD.md) ----
// The instance is a local ensure instance whose main process is `LOCK_PROGRAM lock -n --backend
// URL NAME -- COMMAND` (LOCK_PROGRAM: the holdfast command), which holds NAME in etcd for the
// instance's life and stops COMMAND when its lease may have expired. `holdfast ensure|status|stop
// --backend` call exactly these.

// "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" of `options` (parse_etcd_url's inverse).
std::string etcd_url(const EtcdOptions& options);

// The instance holding NAME, as its etcd key's record describes it.
struct EtcdInstance {
  EtcdHolder holder;
  std::string host;         // "" if the key has no holdfast record (e.g. etcdctl lock)
  pid_t pid = 0;            // the lock process keeping the lease, on `host`
  uint64_t start_time = 0;  // its start time (with pid: what a local stop verifies)
};
// NAME's holder (one linearizable read), or nullopt if nobody holds NAME. Throws EtcdError.
std::optional<EtcdInstance> etcd_instance(const EtcdOptions& options, const std::string& name);

// Exactly one of the two is set.
struct EtcdEnsured {
  std::optional<Instance> local;         // it runs here (started by this call or not)
  std::optional<EtcdInstance> elsewhere; // it runs on another host: nothing was started
  // The holder's fencing token (its key's create revision), read back after a local ensure (0 if
  // the local instance no longer held NAME by then); for `elsewhere`, its holder.token.
  uint64_t token = 0;
};
// Held by another host: returns that instance and starts nothing. Otherwise ensure_running(NAME,
// the wrapped command, options) here; with options.ready none, ready means "NAME is held in etcd"
// (the lock process reports it). If another host won the race, returns that host's instance.
// `lock_program`: the holdfast command's path; "" means $HOLDFAST_CLI, else `holdfast` in $PATH
// (Error(not_found) if none). The password (if any) reaches the lock process only through its
// environment. Throws as ensure_running (StartFailure, ...) and EtcdError.
EtcdEnsured ensure_running(const EtcdOptions& etcd, const std::string& name, const std::vector<std::string>& command,
                           EnsureOptions options, const std::string& lock_program = "");

// Stops NAME's instance, only where it runs and only if verified: not held → was_running false;
// held by another host → Error(data), nothing signalled; on this host, the local instance of
// options.state_dir must be the holder (its main process = the etcd record's pid and start time),
// else Error(data); then stop_instance(name, options). Throws EtcdError, and as stop_instance.
StopResult stop_instance(const EtcdOptions& etcd, const std::string& name, const StopOptions& options);

// The JSON objects `holdfast ensure|status --json --backend` print, which the C API and Python
// return too (docs/ETCD.md). An instance: {"name","backend":"etcd","host","pid","token","key",
// "lease" (hex),"ttl_remaining_s","record" (the etcd key's record),"local" (true if `host` is this
// host)}; not running: {"name","backend":"etcd","host":null,"local":false}.
std::string etcd_instance_json(const std::string& name, const std::optional<EtcdInstance>& instance);
// ensure's: run here, the local instance record plus "backend":"etcd","started","token" and
// "local":true; elsewhere, etcd_instance_json's object plus "started":false.
std::string etcd_ensured_json(const std::string& name, const EtcdEnsured& ensured);

}  // namespace holdfast
