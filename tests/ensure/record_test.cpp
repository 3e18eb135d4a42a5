// InstanceRecord::parse, read by every client (the SAX reader in src/ensure/record.cpp): a record
// written by to_json comes back field for field; anything that is not a complete, well-typed
// record is rejected (callers fail closed on nullopt), and unknown fields are ignored.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "holdfast/ensure.hpp"

namespace {

using holdfast::FailureKind;
using holdfast::InstanceRecord;
using holdfast::RecordState;

InstanceRecord full_record() {
  InstanceRecord r;
  r.name = "web";
  r.process = holdfast::ProcessIdentity{4242, 987654321012ULL, "boot-id-x", "host-y"};
  r.command = {"/usr/bin/server", "--port", "80", "quote\"and\\slash", ""};
  r.state = RecordState::ready;
  r.ready_mode = "notify";
  r.status = "serving";
  r.attempt = 0xfedcba9876543211ULL;
  r.spawned_unix_ns = 1'700'000'000'000'000'001;
  r.ready_unix_ns = 1'700'000'000'500'000'002;
  r.attempt_started_boot_ns = 123;
  r.attempt_ended_boot_ns = 456;
  r.launcher_pid = 4241;
  r.launcher_start_time = 987654320000ULL;
  r.launcher_lock_fd = 7;
  r.forked = true;
  r.failure = "why";
  r.failure_kind = FailureKind::cannot_exec;
  r.exit_status = 126;
  r.log_path = "/run/holdfast/web.log";
  holdfast::SupervisionRecord v;
  v.state = "backoff";
  v.restart = "on-failure";
  v.starts = 3;
  v.restarts = 2;
  v.last_exit = "killed by signal 9 (Killed)";
  v.last_exit_status = 137;
  v.next_attempt_unix_ns = -5;
  v.decision = "restart in 1s";
  v.adopted = true;
  v.keep = true;
  r.supervision = v;
  return r;
}

TEST(Record, RoundTripsEveryField) {
  const auto r = full_record();
  auto back = InstanceRecord::parse(r.to_json() + "\n");
  ASSERT_TRUE(back);
  EXPECT_EQ(back->name, r.name);
  EXPECT_EQ(back->process.pid, r.process.pid);
  EXPECT_EQ(back->process.start_time, r.process.start_time);
  EXPECT_EQ(back->process.boot_id, r.process.boot_id);
  EXPECT_EQ(back->process.host, r.process.host);
  EXPECT_EQ(back->command, r.command);
  EXPECT_EQ(back->state, r.state);
  EXPECT_EQ(back->ready_mode, r.ready_mode);
  EXPECT_EQ(back->status, r.status);
  EXPECT_EQ(back->attempt, r.attempt);
  EXPECT_EQ(back->spawned_unix_ns, r.spawned_unix_ns);
  EXPECT_EQ(back->ready_unix_ns, r.ready_unix_ns);
  EXPECT_EQ(back->attempt_started_boot_ns, r.attempt_started_boot_ns);
  EXPECT_EQ(back->attempt_ended_boot_ns, r.attempt_ended_boot_ns);
  EXPECT_EQ(back->launcher_pid, r.launcher_pid);
  EXPECT_EQ(back->launcher_start_time, r.launcher_start_time);
  EXPECT_EQ(back->launcher_lock_fd, r.launcher_lock_fd);
  EXPECT_EQ(back->forked, r.forked);
  EXPECT_EQ(back->failure, r.failure);
  EXPECT_EQ(back->failure_kind, r.failure_kind);
  EXPECT_EQ(back->exit_status, r.exit_status);
  EXPECT_EQ(back->log_path, r.log_path);
  ASSERT_TRUE(back->supervision);
  const auto& v = *back->supervision;
  const auto& w = *r.supervision;
  EXPECT_EQ(v.state, w.state);
  EXPECT_EQ(v.restart, w.restart);
  EXPECT_EQ(v.starts, w.starts);
  EXPECT_EQ(v.restarts, w.restarts);
  EXPECT_EQ(v.last_exit, w.last_exit);
  EXPECT_EQ(v.last_exit_status, w.last_exit_status);
  EXPECT_EQ(v.next_attempt_unix_ns, w.next_attempt_unix_ns);
  EXPECT_EQ(v.decision, w.decision);
  EXPECT_EQ(v.adopted, w.adopted);
  EXPECT_EQ(v.keep, w.keep);
}

TEST(Record, OptionalFieldsDefaultAndUnknownFieldsAreIgnored) {
  auto j = nlohmann::json::parse(full_record().to_json());
  for (const char* k : {"status", "spawned_unix_ns", "ready_unix_ns", "attempt_started_boot_ns",
                        "attempt_ended_boot_ns", "launcher_pid", "launcher_start_time", "launcher_lock_fd", "forked",
                        "failure", "failure_kind", "exit_status", "log", "supervise"}) {
    j.erase(k);
  }
  j["future"] = {{"nested", {1, 2, {{"name", "not the name"}}}}, {"pid", "x"}};
  j["future_list"] = nlohmann::json::array({nlohmann::json::object({{"state", 5}}), nullptr});
  auto r = InstanceRecord::parse(j.dump());
  ASSERT_TRUE(r) << j.dump();
  EXPECT_EQ(r->name, "web");
  EXPECT_EQ(r->launcher_pid, 0);
  EXPECT_EQ(r->launcher_lock_fd, -1);
  EXPECT_EQ(r->exit_status, -1);
  EXPECT_EQ(r->failure_kind, FailureKind::none);
  EXPECT_FALSE(r->supervision);
  j["supervise"] = nullptr;  // not an object: no supervision, as before
  r = InstanceRecord::parse(j.dump());
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->supervision);
  j["pid"] = 1;  // a key given twice: the last counts
  auto text = j.dump();
  text.insert(text.size() - 1, R"(,"pid":77)");
  r = InstanceRecord::parse(text);
  ASSERT_TRUE(r) << text;
  EXPECT_EQ(r->process.pid, 77);
}

TEST(Record, IncompleteOrMistypedRecordsAreRejected) {
  const auto good = nlohmann::json::parse(full_record().to_json());
  for (const char* k : {"name", "pid", "start_time", "boot_id", "host", "command", "state", "ready_mode", "attempt"}) {
    auto j = good;
    j.erase(k);
    EXPECT_FALSE(InstanceRecord::parse(j.dump())) << "without " << k;
  }
  auto bad = [&](const char* key, const nlohmann::json& value) {
    auto j = good;
    j[key] = value;
    EXPECT_FALSE(InstanceRecord::parse(j.dump())) << j.dump();
  };
  bad("pid", "4242");
  bad("pid", 1.5);
  bad("pid", 1ULL << 40);  // does not fit a pid
  bad("start_time", -1);
  bad("launcher_lock_fd", nullptr);
  bad("name", 5);
  bad("boot_id", nullptr);
  bad("command", "sleep 1");
  bad("command", nlohmann::json::array({"sleep", 1}));
  bad("command", nlohmann::json::array({nlohmann::json::array({"sleep"})}));
  bad("state", "running");
  bad("forked", 1);
  bad("host", nlohmann::json::object({{"name", "h"}}));
  auto sv = good;
  sv["supervise"]["starts"] = "3";
  EXPECT_FALSE(InstanceRecord::parse(sv.dump()));
  for (const char* text : {"", "[]", "5", "null", "{", R"({"name":"web"})"}) {
    EXPECT_FALSE(InstanceRecord::parse(text)) << text;
  }
  auto text = good.dump();
  EXPECT_FALSE(InstanceRecord::parse(text.substr(0, text.size() - 1)));  // truncated
  EXPECT_FALSE(InstanceRecord::parse(text + "{}"));                       // trailing garbage
}

}  // namespace
