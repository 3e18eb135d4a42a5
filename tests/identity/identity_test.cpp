#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "holdfast/identity.hpp"
#include "support/testing.hpp"

namespace holdfast {
namespace {

TEST(Identity, SelfIsAliveAndMatchesProc) {
  auto me = self_identity();
  EXPECT_EQ(me.pid, ::getpid());
  EXPECT_GT(me.start_time, 0u);
  EXPECT_FALSE(me.boot_id.empty());
  EXPECT_EQ(judge_liveness(me).liveness, Liveness::alive);
}

// ns_inode reads the namespace links' text ("pid:[4026531836]"); it must name the inode that
// stat(2) finds through the link, which older records hold and other readers compute.
TEST(Identity, NamespaceInodesAreThoseStatFinds) {
  struct stat pid_ns {}, time_ns {};
  ASSERT_EQ(::stat("/proc/self/ns/pid", &pid_ns), 0);
  ASSERT_EQ(::stat("/proc/self/ns/time", &time_ns), 0);
  const auto me = self_identity();
  EXPECT_EQ(me.pid_ns, static_cast<uint64_t>(pid_ns.st_ino));
  EXPECT_EQ(me.time_ns, static_cast<uint64_t>(time_ns.st_ino));
  EXPECT_EQ(system_process_table().pid_ns(), static_cast<uint64_t>(pid_ns.st_ino));
  EXPECT_EQ(system_process_table().time_ns(), static_cast<uint64_t>(time_ns.st_ino));
}

// A fork bracketed within one clock tick gives the start time /proc shows for the child; one that
// is not closed, or that spans ticks, gives none (and /proc is read).
TEST(ForkBracket, GivesTheStartTimeProcShows) {
  int bracketed = 0;
  for (int round = 0; round < 200 && bracketed < 20; ++round) {
    int gate[2];
    ASSERT_EQ(::pipe(gate), 0);
    ForkBracket fork;
    EXPECT_FALSE(fork.start_time()) << "not closed yet";
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(gate[1]);
      char c;
      (void)!::read(gate[0], &c, 1);
      ::_exit(0);
    }
    fork.close();
    ASSERT_GT(pid, 0);
    ::close(gate[0]);
    const auto from_proc = identity_of(pid);
    const auto from_bracket = identity_of_forked_child(pid, fork);
    ::close(gate[1]);
    testing::wait_child(pid);
    ASSERT_TRUE(from_proc);
    ASSERT_TRUE(from_bracket);
    EXPECT_EQ(from_bracket->start_time, from_proc->start_time) << "round " << round;
    EXPECT_EQ(*from_bracket, *from_proc);
    if (fork.start_time()) {
      EXPECT_EQ(*fork.start_time(), from_proc->start_time) << "round " << round;
      ++bracketed;
    }
  }
  EXPECT_GT(bracketed, 0) << "no fork of 200 fell within one clock tick";
}

TEST(Identity, ExitedAndReapedChildIsDead) {
  // The child runs until we have read its identity (a child that exits first leaves no start
  // time to read, and a record without one is rightly unverifiable); then it exits and is reaped.
  int gate[2];
  ASSERT_EQ(::pipe(gate), 0);
  pid_t pid = testing::fork_child([&] {
    ::close(gate[1]);
    char c;
    (void)!::read(gate[0], &c, 1);
    return 0;
  });
  ::close(gate[0]);
  auto live = identity_of(pid);
  ::close(gate[1]);
  testing::wait_child(pid);
  ASSERT_TRUE(live) << "could not read the running child's identity";
  const ProcessIdentity id = *live;
  auto verdict = judge_liveness(id);
  EXPECT_EQ(verdict.liveness, Liveness::dead) << verdict.reason;
}

TEST(Identity, ZombieIsDead) {
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  pid_t pid = testing::fork_child([&] {
    ::close(pipefd[0]);
    return 0;
  });
  ::close(pipefd[1]);
  char c;
  while (::read(pipefd[0], &c, 1) > 0) {
  }
  ::close(pipefd[0]);
  // The child has exited but is not reaped: it is a zombie. Wait until /proc says so.
  ProcessIdentity id{pid, 0, this_boot_id(), this_host()};
  for (int i = 0; i < 1000; ++i) {
    auto e = system_process_table().lookup(pid);
    if (e.state == ProcessTable::Entry::State::zombie) {
      id.start_time = e.start_time;
      break;
    }
    ::usleep(1000);
  }
  auto verdict = judge_liveness(id);
  EXPECT_EQ(verdict.liveness, Liveness::dead) << verdict.reason;
  testing::wait_child(pid);
}

// The table's entry names the parent from the same /proc/PID/stat read (ensure's verification
// uses it instead of a second read); a process whose comm holds ") " still parses.
TEST(Identity, TableEntryNamesTheParentFromTheSameRead) {
  int gate[2];
  int renamed[2];
  ASSERT_EQ(::pipe(gate), 0);
  ASSERT_EQ(::pipe(renamed), 0);
  pid_t pid = testing::fork_child([&] {
    ::close(gate[1]);
    ::close(renamed[0]);
    if (::prctl(PR_SET_NAME, "odd) name (x") != 0) return 2;
    ::close(renamed[1]);  // EOF tells the parent the name is set
    char c;
    while (::read(gate[0], &c, 1) > 0) {
    }
    return 0;
  });
  ::close(gate[0]);
  ::close(renamed[1]);
  char c;
  while (::read(renamed[0], &c, 1) > 0) {
  }
  ::close(renamed[0]);
  auto e = system_process_table().lookup(pid);
  EXPECT_EQ(e.state, ProcessTable::Entry::State::running);
  EXPECT_EQ(e.parent, ::getpid());
  EXPECT_EQ(system_process_table().lookup(::getpid()).parent, ::getppid());
  ::close(gate[1]);
  EXPECT_EQ(testing::wait_child(pid), 0);
}

TEST(Identity, LivePidWithOtherStartTimeIsReused) {
  auto me = self_identity();
  me.start_time += 1;
  auto verdict = judge_liveness(me);
  EXPECT_EQ(verdict.liveness, Liveness::dead);
  EXPECT_NE(verdict.reason.find("reused"), std::string::npos) << verdict.reason;
}

TEST(Identity, OtherHostIsUnknown) {
  auto me = self_identity();
  me.host = "some-other-host";
  me.start_time += 1;  // even a mismatching start time proves nothing on another host
  EXPECT_EQ(judge_liveness(me).liveness, Liveness::unknown);
}

TEST(Identity, OtherBootOnThisHostIsDead) {
  auto me = self_identity();
  me.boot_id = "00000000-0000-0000-0000-000000000000";
  EXPECT_EQ(judge_liveness(me).liveness, Liveness::dead);
}

// A table that models a /proc mounted with hidepid: other users' processes are invisible,
// and kill(2) answers EPERM.
class HiddenProcTable final : public ProcessTable {
 public:
  Entry lookup(pid_t) const override { return {Entry::State::missing, 0, ENOENT}; }
  int signal_probe(pid_t) const override { return -EPERM; }
  const std::string& boot_id() const override { return this_boot_id(); }
  const std::string& host() const override { return this_host(); }
};

TEST(Identity, EpermPidBehindHiddenProcIsUnknown) {
  HiddenProcTable table;
  ProcessIdentity id{12345, 1, this_boot_id(), this_host()};
  auto verdict = judge_liveness(id, table);
  EXPECT_EQ(verdict.liveness, Liveness::unknown) << verdict.reason;
}

TEST(Identity, UnreadableProcEntryIsUnknown) {
  class Unreadable final : public ProcessTable {
   public:
    Entry lookup(pid_t) const override { return {Entry::State::unreadable, 0, EACCES}; }
    int signal_probe(pid_t) const override { return -ESRCH; }
    const std::string& boot_id() const override { return this_boot_id(); }
    const std::string& host() const override { return this_host(); }
  } table;
  ProcessIdentity id{4242, 1, this_boot_id(), this_host()};
  EXPECT_EQ(judge_liveness(id, table).liveness, Liveness::unknown);
}

// C6: /proc/sys hidden (systemd ProcSubset=pid) or /proc unreadable: the fallback values must
// make a record unverifiable (held), never look like proof of a reboot or a reused pid.
class NoBootIdTable final : public ProcessTable {
 public:
  Entry lookup(pid_t pid) const override { return system_process_table().lookup(pid); }
  int signal_probe(pid_t pid) const override { return system_process_table().signal_probe(pid); }
  const std::string& boot_id() const override { return empty_; }
  const std::string& host() const override { return this_host(); }

 private:
  std::string empty_;
};

TEST(Identity, C6_ReaderWithoutBootIdCannotProveDeath) {
  auto me = self_identity();
  me.boot_id = "00000000-0000-0000-0000-000000000000";
  NoBootIdTable table;
  EXPECT_EQ(judge_liveness(me, table).liveness, Liveness::unknown);
}

TEST(Identity, C6_RecordWithoutBootIdOrStartTimeIsUnverifiable) {
  auto me = self_identity();
  auto no_boot = me;
  no_boot.boot_id.clear();
  EXPECT_FALSE(no_boot.verifiable());
  EXPECT_EQ(judge_liveness(no_boot).liveness, Liveness::unknown) << judge_liveness(no_boot).reason;
  auto no_start = me;
  no_start.start_time = 0;
  EXPECT_FALSE(no_start.verifiable());
  EXPECT_EQ(judge_liveness(no_start).liveness, Liveness::unknown) << judge_liveness(no_start).reason;
  EXPECT_TRUE(me.verifiable());
}

// C5: a pid is only meaningful in its pid namespace, a start time only in its time namespace.
TEST(Identity, C5_OtherPidOrTimeNamespaceIsUnknown) {
  auto me = self_identity();
  ASSERT_NE(me.pid_ns, 0u) << "self identity records its pid namespace";
  me.start_time += 1;  // would be "reused" (dead) in our own namespace
  auto other_pid_ns = me;
  other_pid_ns.pid_ns += 1;
  EXPECT_EQ(judge_liveness(other_pid_ns).liveness, Liveness::unknown);
  if (me.time_ns != 0) {
    auto other_time_ns = me;
    other_time_ns.time_ns += 1;
    EXPECT_EQ(judge_liveness(other_time_ns).liveness, Liveness::unknown);
  }
  // Records without namespaces (older writers) are judged as before.
  auto legacy = me;
  legacy.pid_ns = legacy.time_ns = 0;
  EXPECT_EQ(judge_liveness(legacy).liveness, Liveness::dead);
}

// A reader on a machine with a known machine id (the real one may be absent in a container).
class MachineTable final : public ProcessTable {
 public:
  explicit MachineTable(std::string machine_id) : machine_id_(std::move(machine_id)) {}
  Entry lookup(pid_t pid) const override { return system_process_table().lookup(pid); }
  int signal_probe(pid_t pid) const override { return system_process_table().signal_probe(pid); }
  const std::string& boot_id() const override { return this_boot_id(); }
  const std::string& host() const override { return this_host(); }
  const std::string& machine_id() const override { return machine_id_; }

 private:
  std::string machine_id_;
};

// S4: two machines with one host name (cloned VMs, "localhost"). A record from "this host name"
// with another boot id is proof of a reboot only if it also names this machine; a record naming
// another machine is another host's (unknown: held), and old records without a machine id keep
// today's judgment.
TEST(Identity, S4_SameHostNameOtherMachineIsNeverRebooted) {
  MachineTable table("0123456789abcdef0123456789abcdef");
  auto rec = self_identity();
  rec.boot_id = "00000000-0000-0000-0000-000000000000";
  rec.machine_id = "fedcba9876543210fedcba9876543210";
  auto verdict = judge_liveness(rec, table);
  EXPECT_EQ(verdict.liveness, Liveness::unknown) << verdict.reason;
  // The reader cannot read its own machine id: it cannot tell, so unknown as well.
  EXPECT_EQ(judge_liveness(rec, MachineTable("")).liveness, Liveness::unknown);
  rec.machine_id = "0123456789abcdef0123456789abcdef";
  EXPECT_EQ(judge_liveness(rec, table).liveness, Liveness::dead) << "same machine, another boot: rebooted";
  rec.machine_id.clear();
  EXPECT_EQ(judge_liveness(rec, table).liveness, Liveness::dead) << "older record: judged as before";
}

TEST(Identity, S4_SelfIdentityRecordsThisMachineId) {
  EXPECT_EQ(self_identity().machine_id, this_machine_id());
  EXPECT_EQ(judge_liveness(self_identity()).liveness, Liveness::alive);
}

}  // namespace
}  // namespace holdfast
