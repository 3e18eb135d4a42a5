// ensure/status/stop on etcd: see ensure_etcd.hpp and docs/ETCD.md ("ensure on etcd").
#include "ensure_etcd.hpp"

#include <unistd.h>

#include <cstdio>
#include <optional>

#include "duration.hpp"
#include "hand_over.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"

namespace holdfast::cli {
namespace {

EtcdOptions options_of(const EtcdBackendArgs& etcd) {
  EtcdFlags flags = etcd.flags;
  if (!etcd.ttl.empty()) flags.ttl = parse_duration(etcd.ttl, "--ttl");
  return etcd_options_of(etcd.backend, flags);
}

int print_remote(const std::string& name, const EtcdEnsured& ensured, bool json) {
  const EtcdInstance& inst = *ensured.elsewhere;
  if (json) {
    std::printf("%s\n", etcd_ensured_json(name, ensured).c_str());
  } else {
    std::printf("%d %s\n", inst.pid, inst.host.c_str());
  }
  return 0;
}

}  // namespace

void add_etcd_backend_flags(CLI::App* sub, EtcdBackendArgs& args) {
  sub->add_option("--backend", args.backend,
                   "etcd://HOST:PORT[,HOST:PORT...]/PREFIX: one instance across machines (docs/ETCD.md)");
  sub->add_option("--ttl", args.ttl, "etcd: lease TTL (default 10s)");
  sub->add_option("--cacert", args.flags.cacert, "etcd: TLS CA file");
  sub->add_option("--cert", args.flags.cert, "etcd: TLS client certificate");
  sub->add_option("--key", args.flags.key, "etcd: TLS client key");
  // Not --user: ensure has it (the daemon's user).
  sub->add_option("--etcd-user", args.flags.user, "etcd: authenticate as NAME[:PASSWORD] (else $HOLDFAST_ETCD_PASSWORD)");
}

int ensure_etcd(const EtcdBackendArgs& etcd, const std::string& name, const std::vector<std::string>& command,
                EnsureOptions options, bool json) {
  try {
    const EtcdEnsured result = ensure_running(options_of(etcd), name, command, std::move(options), this_executable());
    if (result.elsewhere) return print_remote(name, result, json);
    const Instance& inst = *result.local;
    if (json) {
      std::printf("%s\n", etcd_ensured_json(name, result).c_str());
    } else {
      std::printf("%d %s\n", inst.pid, this_host().c_str());
    }
    return 0;
  } catch (const StartFailure& e) {
    std::fprintf(stderr, "holdfast ensure: %s\n", e.what());
    if (!e.log_tail().empty()) std::fprintf(stderr, "--- last lines of the log ---\n%s\n", e.log_tail().c_str());
    return e.exit_code();
  }
}

int status_etcd(const EtcdBackendArgs& etcd, const std::string& name, bool json) {
  auto inst = etcd_instance(options_of(etcd), name);
  if (json) {
    std::printf("%s\n", etcd_instance_json(name, inst).c_str());
  } else if (inst) {
    std::printf("%-24s %-8s %-8d %s token=%llu\n", name.c_str(), "running", inst->pid, inst->host.c_str(),
                static_cast<unsigned long long>(inst->holder.token));
  } else {
    std::printf("%-24s %-8s %-8s -\n", name.c_str(), "stopped", "-");
  }
  return inst ? 0 : 3;  // LSB, as the local status
}

int stop_etcd(const EtcdBackendArgs& etcd, const std::string& name, const StopOptions& options) {
  auto result = stop_instance(options_of(etcd), name, options);
  std::fprintf(stderr, "%s\n", result.message.c_str());
  return 0;
}

}  // namespace holdfast::cli
