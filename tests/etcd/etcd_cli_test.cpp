// `holdfast lock --backend etcd://...` against a real etcd: lease loss stops the command, fencing
// refuses the paused ex-holder's writes, and every error path is one line with its exit code.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "etcd/etcd_cluster.hpp"
#include "holdfast/identity.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace holdfast {
namespace {

using testing::EtcdCluster;
using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Waits (on state, bounded only to catch a hang) until `done()`.
template <typename F>
void wait_for(F done, const char* what) {
  const auto give_up = std::chrono::steady_clock::now() + 120s;
  while (!done()) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "hung waiting for " << what;
    std::this_thread::sleep_for(20ms);
  }
}

// `holdfast ARGS` started in the background, stderr to `err`.
sys::Child start_holdfast(const std::vector<std::string>& args, const std::string& err) {
  sys::SpawnRequest r;
  r.executable = testing::holdfast_path();
  r.argv = {"holdfast"};
  r.argv.insert(r.argv.end(), args.begin(), args.end());
  for (char** e = environ; *e != nullptr; ++e) r.env.emplace_back(*e);
  sys::UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  sys::UniqueFd log(::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  r.fds = {{0, null.get()}, {1, null.get()}, {2, log.get()}};
  return sys::spawn(r);
}

int exit_status(sys::Child& c) {
  int s = c.wait();
  return WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
}

// A shell fenced write: the resource R accepts $HOLDFAST_TOKEN only if it is >= the highest token
// it accepted; every attempt is logged as "ok T" or "refused T".
std::string fenced_write(const std::string& dir) {
  return "flock " + dir + "/R.lock sh -c 'last=$(cat " + dir + "/R 2>/dev/null || echo 0); "
         "if [ \"$HOLDFAST_TOKEN\" -ge \"$last\" ]; then echo $HOLDFAST_TOKEN > " + dir + "/R; echo \"ok $HOLDFAST_TOKEN\" >> " +
         dir + "/log; else echo \"refused $HOLDFAST_TOKEN\" >> " + dir + "/log; fi'";
}

// SIGSTOP the holder (holdfast) past its TTL while its command keeps writing; another holder gets
// the lock. In every round: the paused holder's writes after that are refused by fencing, and on
// resuming it stops its command and exits 90 saying so.
TEST(EtcdCli, AHolderPausedPastItsTtlIsStoppedAndFenced) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("locks");
  auto o = etcd.options("locks");
#ifdef HOLDFAST_SANITIZED
  const int rounds = 1;
#else
  const int rounds = 3;
#endif
  for (int round = 0; round < rounds; ++round) {
    testing::TempDir dir;
    const std::string d = dir.path();
    auto a = start_holdfast({"lock", "--backend", url, "--ttl", "2s", "job", "sh", "-c",
                             "echo $$ > " + d + "/a.pid; while :; do " + fenced_write(d) + "; sleep 0.05; done"},
                            d + "/a.err");
    wait_for([&] { return slurp(d + "/log").find("ok ") != std::string::npos; }, "A's first write");
    const uint64_t token_a = inspect_etcd_holder(o, "job").token;
    ASSERT_EQ(::kill(a.pid(), SIGSTOP), 0);
    // B gets the lock once A's lease expired (A cannot renew while stopped).
    auto b = start_holdfast({"lock", "--backend", url, "job", "sh", "-c",
                             fenced_write(d) + "; touch " + d + "/b.wrote; while [ ! -e " + d + "/b.release ]; do sleep 0.05; done"},
                            d + "/b.err");
    wait_for([&] { return exists(d + "/b.wrote"); }, "B's write");
    const uint64_t token_b = inspect_etcd_holder(o, "job").token;
    EXPECT_GT(token_b, token_a);
    wait_for([&] { return slurp(d + "/log").find("refused " + std::to_string(token_a)) != std::string::npos; },
             "A's command to be refused");
    ::kill(a.pid(), SIGCONT);
    EXPECT_EQ(exit_status(a), 90) << slurp(d + "/a.err");
    const std::string err = slurp(d + "/a.err");
    EXPECT_NE(err.find("lock lost"), std::string::npos) << err;
    const pid_t command = std::stoi(slurp(d + "/a.pid"));
    EXPECT_NE(::kill(command, 0), 0) << "A's command still runs";
    // Nothing of A's was accepted after B's grant.
    const std::string log = slurp(d + "/log");
    const auto b_at = log.find("ok " + std::to_string(token_b));
    ASSERT_NE(b_at, std::string::npos);
    EXPECT_EQ(log.find("ok " + std::to_string(token_a), b_at), std::string::npos) << log;
    std::ofstream(d + "/b.release").put('\n');
    EXPECT_EQ(exit_status(b), 0) << slurp(d + "/b.err");
  }
}

TEST(EtcdCli, ExclusionTokenAndNonblockConflict) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("p");
  auto r = testing::holdfast({"lock", "--backend", url, "n", "sh", "-c",
                              "echo $HOLDFAST_TOKEN; " + testing::holdfast_path() + " lock -n --backend " + url + " n true; echo $?"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::istringstream out(r.out);
  uint64_t token = 0;
  int inner = -1;
  out >> token >> inner;
  EXPECT_GT(token, 0u);
  EXPECT_EQ(inner, 1);
  // -E and -w as flock(1); a shared lock is refused.
  EXPECT_EQ(testing::holdfast({"lock", "--backend", url, "-s", "n", "true"}).exit_code, 64);
  EXPECT_EQ(testing::holdfast({"lock", "--backend", url, "n", "sh", "-c", "exit 7"}).exit_code, 7);
}

TEST(EtcdCli, HolderShowsWhoHoldsItAndWhere) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("p");
  const std::string hf = testing::holdfast_path();
  auto r = testing::holdfast({"lock", "--backend", url, "n", "sh", "-c",
                              "echo $HOLDFAST_TOKEN $PPID; " + hf + " holder --json --backend " + url + " n; exit 0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream out(r.out);
  uint64_t token = 0;
  pid_t holdfast = 0;  // the command's parent: named in the record from the grant on
  std::string line;
  out >> token >> holdfast;
  std::getline(out, line);
  std::getline(out, line);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["state"], "held");
  EXPECT_EQ(j["token"].get<uint64_t>(), token);
  EXPECT_EQ(j["record"]["host"], this_host());
  bool names_holder = false;
  for (const auto& p : j["record"]["processes"]) names_holder |= p["pid"].get<pid_t>() == holdfast;
  EXPECT_TRUE(names_holder) << line;
  auto after = testing::holdfast({"holder", "--backend", url, "n"});
  EXPECT_EQ(after.exit_code, 0) << after.out << after.err;
  EXPECT_NE(after.out.find("free"), std::string::npos);
}

// Same keys as etcd's concurrency.Mutex: `etcdctl lock PREFIX/NAME` and holdfast exclude each other.
TEST(EtcdCli, ExcludesEtcdctlLockOnTheSameName) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("p");
  auto r = testing::run({"etcdctl", "--endpoints=" + etcd.endpoint(0), "lock", "p/n", "--", testing::holdfast_path(), "lock",
                         "-n", "--backend", url, "n", "true"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;  // held by etcdctl: -n conflicts
  auto back = testing::holdfast({"lock", "--backend", url, "n", "sh", "-c",
                                 "etcdctl --endpoints=" + etcd.endpoint(0) + " get --prefix p/n/ --keys-only | grep -c p/n/"});
  EXPECT_EQ(back.exit_code, 0) << back.err;
  EXPECT_EQ(back.out, "1\n");  // our key is where etcdctl looks for holders
}

// The command runs as flock(1)'s does (regression: it was started as a service, with every
// descriptor but 0-2 closed and every signal reset): it writes through the descriptor it was
// given (`3>file`), a signal ignored at start (nohup) is still ignored, and its signal mask is the
// one holdfast started with; a script without "#!" runs with /bin/sh. flock(1), run the same way,
// gives the expected output. A command that exists but cannot be executed gets flock(1)'s message
// and status (69).
TEST(EtcdCli, TheCommandInheritsWhatFlock1sCommandInherits) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  testing::TempDir dir;
  const std::vector<std::vector<std::string>> tools = {
      {"flock", dir / "F"}, {testing::holdfast_path(), "lock", "--backend", etcd.url("p"), "n"}};
  auto with_command = [](std::vector<std::string> tool, const std::vector<std::string>& command) {
    tool.insert(tool.end(), command.begin(), command.end());
    return tool;
  };
  // Dispositions and mask, read by the command itself (no shell in between: dash clears the mask).
  std::vector<std::string> seen;
  {
    sigset_t usr2;
    sigset_t before;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    ::sigprocmask(SIG_BLOCK, &usr2, &before);
    struct sigaction ignore {};
    struct sigaction hup_before {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGHUP, &ignore, &hup_before);
    struct sigaction pipe_before {};
    ::sigaction(SIGPIPE, nullptr, &pipe_before);
    for (const auto& tool : tools) {
      ::signal(SIGPIPE, SIG_DFL);  // testing::run ignores it in this process after each fork
      auto r = testing::run(with_command(tool, {"grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"}));
      EXPECT_EQ(r.exit_code, 0) << tool.front() << ": " << r.err;
      seen.push_back(r.out);
    }
    ::sigaction(SIGPIPE, &pipe_before, nullptr);
    ::sigaction(SIGHUP, &hup_before, nullptr);
    ::sigprocmask(SIG_SETMASK, &before, nullptr);
  }
  // The standard signals (1-31) only: 32 and 33 are glibc's own, which every glibc program sets
  // up for itself (`make` starts its children with them ignored; a threaded holdfast catches 33,
  // which exec resets). The set-up took, and holdfast's command sees what flock(1)'s does.
  auto bits = [](const std::string& status, const std::string& field) -> uint64_t {
    const auto at = status.find(field + ":\t");
    if (at == std::string::npos) return ~uint64_t{0};
    return std::stoull(status.substr(at + field.size() + 2, 16), nullptr, 16) & 0x7fffffffU;
  };
  for (const char* field : {"SigBlk", "SigIgn"}) {
    EXPECT_EQ(bits(seen[1], field), bits(seen[0], field)) << field << ":\n" << seen[1] << "flock(1):\n" << seen[0];
  }
  EXPECT_EQ(bits(seen[0], "SigBlk"), uint64_t{1} << (SIGUSR2 - 1)) << seen[0];
  EXPECT_EQ(bits(seen[0], "SigIgn"), uint64_t{1} << (SIGHUP - 1)) << seen[0];
  // A descriptor it was given.
  for (const auto& tool : tools) {
    const std::string out = dir / "out";
    sys::UniqueFd given(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));  // inheritable
    ASSERT_TRUE(given);
    const std::string n = std::to_string(given.get());
    auto r = testing::run(with_command(tool, {"sh", "-c", "echo through-" + n + " >&" + n}));
    EXPECT_EQ(r.exit_code, 0) << tool.front() << ": " << r.err;
    EXPECT_EQ(testing::read_file(out), "through-" + n + "\n") << tool.front();
  }

  // A script without "#!": execvp(3), and so flock(1), runs it with /bin/sh.
  const std::string script = dir / "script";
  { std::ofstream(script) << "echo ran $1\n"; }
  ::chmod(script.c_str(), 0755);
  for (const auto& tool : tools) {
    auto r = testing::run(with_command(tool, {script, "it"}));
    EXPECT_EQ(r.exit_code, 0) << tool.front() << ": " << r.err;
    EXPECT_EQ(r.out, "ran it\n") << tool.front();
  }

  const std::string not_executable = dir / "data";
  { std::ofstream(not_executable) << "#!/bin/sh\n"; }
  ::chmod(not_executable.c_str(), 0644);
  const auto refused = testing::holdfast({"lock", "--backend", etcd.url("p"), "n", not_executable});
  EXPECT_EQ(refused.exit_code, 69) << refused.err;
  EXPECT_NE(refused.err.find("failed to execute " + not_executable), std::string::npos) << refused.err;
}

// -w gives up at its deadline, leaving no queue key; a signal while waiting ends holdfast (by that
// signal) and its lease is revoked at once (no waiting for the TTL).
TEST(EtcdCli, TimeoutAndInterruptWhileWaitingLeaveNoKey) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string url = etcd.url("p");
  auto o = etcd.options("p");
  auto held = EtcdLock::acquire(o, "n", "", false, std::nullopt);
  ASSERT_TRUE(held);
  EXPECT_EQ(testing::holdfast({"lock", "-w", "0.3", "-E", "9", "--backend", url, "n", "true"}).exit_code, 9);
  EXPECT_EQ(inspect_etcd_holder(o, "n").waiters, 0u);
  testing::TempDir dir;
  auto waiter = start_holdfast({"lock", "--backend", url, "--ttl", "60s", "n", "true"}, dir / "err");
  wait_for([&] { return inspect_etcd_holder(o, "n").waiters == 1; }, "the waiter to queue");
  ::kill(waiter.pid(), SIGTERM);
  EXPECT_EQ(exit_status(waiter), 128 + SIGTERM);
  EXPECT_EQ(inspect_etcd_holder(o, "n").waiters, 0u);  // revoked, not left for 60 s
}

void expect_one_line_error(const testing::CommandResult& r, int code, const std::string& words) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
}

TEST(EtcdCli, UnreachableEndpointsExit69) {
  auto ports = testing::free_ports(2);
  auto r = testing::holdfast({"lock", "--backend", fmt::format("etcd://127.0.0.1:{},127.0.0.1:{}/p", ports[0], ports[1]),
                              "n", "true"});
  expect_one_line_error(r, 69, "etcd unreachable");
}

TEST(EtcdCli, AuthFailureAndPrefixWithoutPermissionExit77) {
  REQUIRE_ETCD();
  EtcdCluster etcd(1);
  const std::string ep = etcd.endpoint(0);
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"etcdctl", "--endpoints=" + ep});
    auto r = testing::run(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  };
  ctl({"user", "add", "root:rootpw"});
  ctl({"role", "add", "locker"});
  ctl({"role", "grant-permission", "locker", "--prefix=true", "readwrite", "allowed/"});
  ctl({"user", "add", "alice:alicepw"});
  ctl({"user", "grant-role", "alice", "locker"});
  ctl({"auth", "enable"});
  const std::string base = "etcd://" + ep + "/";
  auto ok = testing::holdfast({"lock", "--backend", base + "allowed", "--user", "alice:alicepw", "n", "true"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  expect_one_line_error(testing::holdfast({"lock", "--backend", base + "allowed", "--user", "alice:wrong", "n", "true"}),
                        77, "authentication failed");
  expect_one_line_error(testing::holdfast({"lock", "--backend", base + "forbidden", "--user", "alice:alicepw", "n", "true"}),
                        77, "permission denied");
  // The password from the environment authenticates holdfast and is not handed on to the command
  // (`ensure --backend etcd` passes it to its lock process this way; the daemon must not see it).
  auto from_env = testing::run({"env", "HOLDFAST_ETCD_PASSWORD=alicepw", testing::holdfast_path(), "lock", "--backend",
                                base + "allowed", "--user", "alice", "n", "sh", "-c",
                                "test -z \"${HOLDFAST_ETCD_PASSWORD+set}\" || echo leaked"});
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;
  EXPECT_EQ(from_env.out, "");
}

// Certificates made by the test with openssl: a CA, a server certificate for 127.0.0.1, and
// another CA that signed nothing of the server's.
struct Pki {
  explicit Pki(const testing::TempDir& dir) : d(dir.path()) {
    auto sh = [](const std::string& script) {
      auto r = testing::run({"sh", "-ec", script});
      if (r.exit_code != 0) throw std::runtime_error("openssl: " + r.err);
    };
    sh("cd " + d + " && "
       "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null && "
       "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other-ca 2>/dev/null && "
       "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null && "
       "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext && "
       "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null");
  }
  std::string d;
};

TEST(EtcdCli, TlsWorksAndAMismatchExits76) {
  REQUIRE_ETCD();
  testing::TempDir dir;
  Pki pki(dir);
  EtcdCluster etcd(1, testing::EtcdTls{pki.d + "/ca.pem", pki.d + "/server.pem", pki.d + "/server.key", false});
  const std::string url = "etcd://" + etcd.endpoint(0) + "/p";
  auto ok = testing::holdfast({"lock", "--backend", url, "--cacert", pki.d + "/ca.pem", "n", "true"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  expect_one_line_error(testing::holdfast({"lock", "--backend", url, "--cacert", pki.d + "/other.pem", "n", "true"}), 76,
                        "TLS");
  expect_one_line_error(testing::holdfast({"lock", "--backend", url, "n", "true"}), 76, "TLS");
}

}  // namespace
}  // namespace holdfast
