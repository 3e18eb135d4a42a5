// `ensure`, `status` and `stop` with --backend etcd://...: exactly one instance across machines
// (docs/ETCD.md, "ensure on etcd"). The instance is a local ensure instance whose main process is
// `holdfast lock -n --backend URL NAME -- COMMAND`: the resident supervisor on the winning machine
// keeps that lock process, which holds NAME in etcd (keepalive; lease lost: the command is stopped
// and the lock exits 90, so the instance ends). The etcd key's record names the host.
#pragma once

#include "cli11.hpp"
#include <string>
#include <vector>

#include "holdfast/ensure.hpp"
#include "lock_etcd.hpp"

namespace holdfast::cli {

struct EtcdBackendArgs {
  std::string backend;  // etcd://... ("" : the local state directory only)
  std::string ttl;      // --ttl DURATION ("" : the default)
  EtcdFlags flags;
};

// Adds --backend, --ttl, --cacert, --cert, --key, --etcd-user to `sub`.
void add_etcd_backend_flags(CLI::App* sub, EtcdBackendArgs& args);

// ensure on etcd: prints "PID HOST" of the instance (or the JSON record with "host" and
// "started"); starts it here only if no machine runs it. Returns the exit code.
int ensure_etcd(const EtcdBackendArgs& etcd, const std::string& name, const std::vector<std::string>& command,
                EnsureOptions options, bool json);
// status on etcd: who holds NAME (host, pid, token). 0 running, 3 not running.
int status_etcd(const EtcdBackendArgs& etcd, const std::string& name, bool json);
// stop on etcd: on the running host, the local stop of the verified instance; from another host,
// nothing is signalled: one line naming the host, exit 65.
int stop_etcd(const EtcdBackendArgs& etcd, const std::string& name, const StopOptions& options);

}  // namespace holdfast::cli
