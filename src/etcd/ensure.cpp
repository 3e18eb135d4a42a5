// ensure, status and stop on etcd: one instance across machines. See include/holdfast/etcd.hpp
// and docs/ETCD.md ("ensure, status and stop on etcd"). The command (cli/ensure_etcd.cpp) and the
// library share this one implementation.
#include <cstdlib>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "holdfast/ensure.hpp"
#include "holdfast/error.hpp"
#include "holdfast/etcd.hpp"
#include "holdfast/identity.hpp"
#include "sys/process.hpp"

namespace holdfast {
namespace {

// The holdfast command that will keep the lease: the caller's, else $HOLDFAST_CLI, else PATH's
// (resolved as execvp would).
std::string lock_program_of(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("HOLDFAST_CLI"); env != nullptr && env[0] != '\0') return env;
  int err = 0;
  if (auto found = sys::find_executable("holdfast", err)) return *found;
  throw Error("holdfast", "ensure on etcd",
              "the holdfast command (which keeps the lease) is not in $PATH; set HOLDFAST_CLI", exit_code::not_found);
}

}  // namespace

std::string etcd_url(const EtcdOptions& options) {
  std::string url = "etcd://";
  for (size_t i = 0; i < options.endpoints.size(); ++i) url += (i == 0 ? "" : ",") + options.endpoints[i];
  return url + "/" + options.prefix;
}

std::optional<EtcdInstance> etcd_instance(const EtcdOptions& options, const std::string& name) {
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

EtcdEnsured ensure_running(const EtcdOptions& etcd, const std::string& name, const std::vector<std::string>& command,
                           EnsureOptions options, const std::string& lock_program) {
  auto elsewhere = [&]() -> std::optional<EtcdInstance> {
    auto inst = etcd_instance(etcd, name);
    if (inst && inst->host != this_host()) return inst;
    return std::nullopt;
  };
  if (auto inst = elsewhere()) {
    const uint64_t token = inst->holder.token;
    return {std::nullopt, std::move(inst), token};
  }

  // The instance's main process holds NAME in etcd for the instance's life; -n: if another
  // machine won the race, it exits 1 at once and this start fails (then we report the winner).
  std::vector<std::string> wrapped = {lock_program_of(lock_program), "lock",  "--backend", etcd_url(etcd), "-n",
                                      "--ttl", fmt::format("{}s", etcd.ttl.count())};
  if (!etcd.cacert.empty()) wrapped.insert(wrapped.end(), {"--cacert", etcd.cacert});
  if (!etcd.cert.empty()) wrapped.insert(wrapped.end(), {"--cert", etcd.cert});
  if (!etcd.key.empty()) wrapped.insert(wrapped.end(), {"--key", etcd.key});
  if (!etcd.user.empty()) {
    // The password goes through the environment, never on a command line others can read.
    wrapped.insert(wrapped.end(), {"--user", etcd.user});
    if (!etcd.password.empty()) options.environment.push_back("HOLDFAST_ETCD_PASSWORD=" + etcd.password);
  }
  wrapped.insert(wrapped.end(), {name, "--"});
  wrapped.insert(wrapped.end(), command.begin(), command.end());
  if (options.ready.kind == ReadySpec::Kind::none) {
    // "Ready" must mean "NAME is held in etcd", not "the lock process was executed": the lock
    // process reports READY=1 itself once it holds NAME.
    options.ready.kind = ReadySpec::Kind::notify;
    options.environment.emplace_back("HOLDFAST_ETCD_NOTIFY_READY=1");
  }
  std::optional<Instance> local;
  try {
    local = ensure_running(name, wrapped, options);
  } catch (const StartFailure&) {
    if (auto inst = elsewhere()) {  // lost the race
      const uint64_t token = inst->holder.token;
      return {std::nullopt, std::move(inst), token};
    }
    throw;
  }
  // Ready, so its lock process holds NAME: read the token back (it is the holder's only if the
  // holder is still this instance's main process).
  uint64_t token = 0;
  if (auto held = etcd_instance(etcd, name);
      held && held->host == this_host() && held->pid == local->pid && held->start_time == local->start_time) {
    token = held->holder.token;
  }
  return {std::move(local), std::nullopt, token};
}

StopResult stop_instance(const EtcdOptions& etcd, const std::string& name, const StopOptions& options) {
  auto inst = etcd_instance(etcd, name);
  if (!inst) return StopResult{.message = name + ": not running"};
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
  return stop_instance(name, options);
}

std::string etcd_instance_json(const std::string& name, const std::optional<EtcdInstance>& instance) {
  if (!instance) return nlohmann::json{{"name", name}, {"backend", "etcd"}, {"host", nullptr}, {"local", false}}.dump();
  // The record as JSON; as a string if it is none (an etcdctl lock's empty value).
  const auto record = nlohmann::json::parse(instance->holder.record, nullptr, false);
  return nlohmann::json{{"name", name},
                        {"backend", "etcd"},
                        {"host", instance->host},
                        {"pid", instance->pid},
                        {"token", instance->holder.token},
                        {"key", instance->holder.key},
                        {"lease", fmt::format("{:x}", instance->holder.lease_id)},
                        {"ttl_remaining_s", instance->holder.ttl_remaining},
                        {"record", record.is_discarded() ? nlohmann::json(instance->holder.record) : record},
                        {"local", instance->host == this_host()}}
      .dump();
}

std::string etcd_ensured_json(const std::string& name, const EtcdEnsured& ensured) {
  nlohmann::json j;
  if (ensured.local) {
    j = nlohmann::json::parse(ensured.local->record.to_json());
    j["backend"] = "etcd";
    j["started"] = ensured.local->started;
    j["token"] = ensured.token;
    j["local"] = true;
  } else {
    j = nlohmann::json::parse(etcd_instance_json(name, ensured.elsewhere));
    j["started"] = false;
  }
  return j.dump();
}

}  // namespace holdfast
