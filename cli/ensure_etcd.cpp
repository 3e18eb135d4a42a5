// ensure/status/stop on etcd: see ensure_etcd.hpp and docs/ETCD.md ("ensure on etcd").
#include "ensure_etcd.hpp"

#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <optional>

#include "duration.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"

namespace holdfast::cli {
namespace {

// The holder of NAME as the etcd key's record describes it.
struct EtcdInstance {
  EtcdHolder holder;
  std::string host;
  pid_t pid = 0;  // the `holdfast lock` process that keeps the lease, on `host`
  uint64_t start_time = 0;
};

EtcdOptions options_of(const EtcdBackendArgs& etcd) {
  EtcdFlags flags = etcd.flags;
  if (!etcd.ttl.empty()) flags.ttl = parse_duration(etcd.ttl, "--ttl");
  return etcd_options_of(etcd.backend, flags);
}

std::optional<EtcdInstance> holder_of(const EtcdOptions& options, const std::string& name) {
  EtcdInstance inst;
  inst.holder = inspect_etcd_holder(options, name);
  if (!inst.holder.held) return std::nullopt;
  auto record = nlohmann::json::parse(inst.holder.record, nullptr, false);
  if (record.is_object()) {
    inst.host = record.value("host", std::string());
    auto procs = record.find("processes");
    if (procs != record.end() && procs->is_array() && !procs->empty() && (*procs)[0].is_object()) {
      inst.pid = (*procs)[0].value("pid", 0);
      inst.start_time = (*procs)[0].value("start_time", uint64_t{0});
    }
  }
  return inst;
}

nlohmann::json holder_json(const std::string& name, const EtcdInstance& inst) {
  return {{"name", name},
          {"backend", "etcd"},
          {"host", inst.host},
          {"pid", inst.pid},
          {"token", inst.holder.token},
          {"key", inst.holder.key},
          {"lease", fmt::format("{:x}", inst.holder.lease_id)},
          {"ttl_remaining_s", inst.holder.ttl_remaining},
          {"record", nlohmann::json::parse(inst.holder.record, nullptr, false)}};
}

int print_remote(const std::string& name, const EtcdInstance& inst, bool json) {
  if (json) {
    auto j = holder_json(name, inst);
    j["started"] = false;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%d %s\n", inst.pid, inst.host.c_str());
  }
  return 0;
}

std::string self_executable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw Error(errno, "/proc/self/exe", "cannot find holdfast's own executable");
  return std::string(buf, static_cast<size_t>(n));
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
  const EtcdOptions eo = options_of(etcd);
  auto elsewhere = [&]() -> std::optional<EtcdInstance> {
    auto inst = holder_of(eo, name);
    if (inst && inst->host != this_host()) return inst;
    return std::nullopt;
  };
  if (auto inst = elsewhere()) return print_remote(name, *inst, json);

  // The instance's main process holds NAME in etcd for the instance's life; -n: if another
  // machine won the race, it exits 1 at once and this start fails (then we report the winner).
  std::vector<std::string> wrapped = {self_executable(), "lock", "--backend", etcd.backend, "-n"};
  if (!etcd.ttl.empty()) wrapped.insert(wrapped.end(), {"--ttl", etcd.ttl});
  if (!etcd.flags.cacert.empty()) wrapped.insert(wrapped.end(), {"--cacert", etcd.flags.cacert});
  if (!etcd.flags.cert.empty()) wrapped.insert(wrapped.end(), {"--cert", etcd.flags.cert});
  if (!etcd.flags.key.empty()) wrapped.insert(wrapped.end(), {"--key", etcd.flags.key});
  if (!etcd.flags.user.empty()) {
    // The password goes through the environment, never on a command line others can read.
    wrapped.insert(wrapped.end(), {"--user", eo.user});
    if (!eo.password.empty()) options.environment.push_back("HOLDFAST_ETCD_PASSWORD=" + eo.password);
  }
  wrapped.insert(wrapped.end(), {name, "--"});
  wrapped.insert(wrapped.end(), command.begin(), command.end());
  if (options.ready.kind == ReadySpec::Kind::none) {
    // "Ready" must mean "NAME is held in etcd", not "the lock process was executed": the lock
    // process reports READY=1 itself once it holds NAME.
    options.ready.kind = ReadySpec::Kind::notify;
    options.environment.emplace_back("HOLDFAST_ETCD_NOTIFY_READY=1");
  }
  try {
    auto inst = ensure_running(name, wrapped, options);
    if (json) {
      auto j = nlohmann::json::parse(inst.record.to_json());
      j["backend"] = "etcd";
      j["started"] = inst.started;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%d %s\n", inst.pid, this_host().c_str());
    }
    return 0;
  } catch (const StartFailure& e) {
    if (auto inst = elsewhere()) return print_remote(name, *inst, json);  // lost the race
    std::fprintf(stderr, "holdfast ensure: %s\n", e.what());
    if (!e.log_tail().empty()) std::fprintf(stderr, "--- last lines of the log ---\n%s\n", e.log_tail().c_str());
    return e.exit_code();
  }
}

int status_etcd(const EtcdBackendArgs& etcd, const std::string& name, bool json) {
  auto inst = holder_of(options_of(etcd), name);
  if (json) {
    std::printf("%s\n", (inst ? holder_json(name, *inst) : nlohmann::json{{"name", name}, {"backend", "etcd"}, {"host", nullptr}})
                            .dump()
                            .c_str());
  } else if (inst) {
    std::printf("%-24s %-8s %-8d %s token=%llu\n", name.c_str(), "running", inst->pid, inst->host.c_str(),
                static_cast<unsigned long long>(inst->holder.token));
  } else {
    std::printf("%-24s %-8s %-8s -\n", name.c_str(), "stopped", "-");
  }
  return inst ? 0 : 3;  // LSB, as the local status
}

int stop_etcd(const EtcdBackendArgs& etcd, const std::string& name, const StopOptions& options) {
  auto inst = holder_of(options_of(etcd), name);
  if (!inst) {
    std::fprintf(stderr, "%s: not running\n", name.c_str());
    return 0;
  }
  if (inst->host != this_host()) {
    throw Error(name, "stop --backend etcd",
                fmt::format("runs on host {} (pid {}): nothing signalled from here; stop it on {}", inst->host, inst->pid,
                            inst->host),
                exit_code::data);
  }
  // On its host: only the local instance whose main process is the lease's keeper itself.
  auto local = instance_status(name, options.state_dir);
  if (!local.record || local.record->process.pid != inst->pid || local.record->process.start_time != inst->start_time) {
    throw Error(name, "stop --backend etcd",
                fmt::format("the etcd holder (pid {}) is not this state directory's instance: nothing signalled", inst->pid),
                exit_code::data);
  }
  auto result = stop_instance(name, options);
  std::fprintf(stderr, "%s\n", result.message.c_str());
  return 0;
}

}  // namespace holdfast::cli
