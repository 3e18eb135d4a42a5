// Tests for sys::spawn, the spawn helper (launcher daemons, wait --via, the etcd lock's command).
#include "sys/spawn.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "support/testing.hpp"

namespace holdfast::sys {
namespace {

std::string read_all(int fd) {
  std::string out;
  char buf[256];
  ssize_t n = 0;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

// Runs `body` in a forked child (so rlimits and descriptors of the test process stay untouched)
// and returns its exit status.
template <class F>
int in_child(F body) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 200;
}

SpawnRequest shell(const std::string& script) {
  SpawnRequest r;
  r.executable = "/bin/sh";
  r.argv = {"sh", "-c", script};
  r.env = {"PATH=/usr/bin:/bin"};
  return r;
}

TEST(Spawn, SwapsDescriptorsThatNameEachOthersSources) {
  int a[2], b[2];
  ASSERT_EQ(::pipe2(a, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(b, O_CLOEXEC), 0);
  // Child fd 3 <- write end of b, fd 4 <- write end of a, whatever numbers those have now.
  auto req = shell("echo to-a >&4; echo to-b >&3");
  req.fds = {{3, b[1]}, {4, a[1]}};
  auto child = spawn(req);
  ::close(a[1]);
  ::close(b[1]);
  EXPECT_EQ(child.wait(), 0);
  EXPECT_EQ(read_all(a[0]), "to-a\n");
  EXPECT_EQ(read_all(b[0]), "to-b\n");
  ::close(a[0]);
  ::close(b[0]);
}

TEST(Spawn, WorksWithALowDescriptorLimitAndReportsATargetAboveIt) {
  // C9: the old shuffle moved descriptors to >= 64 and could not report that failing.
  int rc = in_child([] {
    rlimit lim{16, 16};
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return 10;
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return 11;
    auto req = shell("echo ok >&5");
    req.fds = {{5, p[1]}};
    auto child = spawn(req);
    ::close(p[1]);
    if (child.wait() != 0) return 12;
    if (read_all(p[0]) != "ok\n") return 13;
    req.fds = {{999999, p[0]}};
    try {
      spawn(req);
      return 14;
    } catch (const SpawnError& e) {
      if (e.exit_code() != exit_code::usage) return 15;
      if (e.step() != "descriptor 999999") return 16;
    }
    return 0;
  });
  EXPECT_EQ(rc, 0);
}

TEST(Spawn, ReportsEachFailedStepWithItsErrno) {
  auto req = shell("true");
  req.executable = "/nonexistent/holdfast-no-such-program";
  try {
    spawn(req);
    FAIL() << "spawned a missing program";
  } catch (const SpawnError& e) {
    EXPECT_EQ(e.exit_code(), exit_code::not_found);
    EXPECT_EQ(e.step(), "exec");
    EXPECT_EQ(e.child_errno(), ENOENT);
  }
  req = shell("true");
  req.chdir = "/nonexistent/dir";
  try {
    spawn(req);
    FAIL() << "chdir into a missing directory succeeded";
  } catch (const SpawnError& e) {
    EXPECT_EQ(e.step(), "chdir");
    EXPECT_NE(std::string(e.what()).find("/bin/sh"), std::string::npos) << e.what();
  }
}

TEST(Spawn, ChildSeesOnlyItsMappedDescriptorsAndItsSettings) {
  testing::TempDir dir;
  int leak = ::fcntl(2, F_DUPFD, 50);  // deliberately inheritable: spawn must still close it
  ASSERT_GE(leak, 50);
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  auto req = shell("ls /proc/self/fd | sort -n | tr '\\n' ' '; pwd; umask");
  req.fds = {{1, out[1]}};
  req.chdir = dir.path();
  req.umask = 027;
  auto child = spawn(req);
  ::close(out[1]);
  EXPECT_EQ(child.wait(), 0);
  auto text = read_all(out[0]);
  // 0 1 2, plus the fd ls itself opens for the directory.
  EXPECT_EQ(text.find(" " + std::to_string(leak) + " "), std::string::npos) << text;
  EXPECT_NE(text.find(dir.path() + "\n"), std::string::npos) << text;
  EXPECT_NE(text.find("0027"), std::string::npos) << text;
  ::close(leak);
  ::close(out[0]);
}

// Inheritance::like_exec keeps what a plain exec keeps: an inheritable descriptor stays open, an
// ignored signal stays ignored, a caught one is back to default, and the mask is the request's.
// clean_slate (the default) keeps none of it. Run in a forked child: dispositions and the mask
// are the whole process's.
TEST(Spawn, LikeExecKeepsWhatExecKeepsAndCleanSlateDoesNot) {
  for (auto how : {SpawnRequest::Inheritance::like_exec, SpawnRequest::Inheritance::clean_slate}) {
    const bool like_exec = how == SpawnRequest::Inheritance::like_exec;
    EXPECT_EQ(in_child([how, like_exec] {
                ::signal(SIGPIPE, SIG_DFL);  // ignored by testing::run in a process that called it
                ::signal(SIGHUP, SIG_IGN);
                ::signal(SIGUSR1, [](int) {});
                int out[2];
                if (::pipe2(out, O_CLOEXEC) != 0) return 10;
                const int given = ::open("/dev/null", O_WRONLY);  // inheritable
                // Read by cat itself (dash clears the mask at its start, grep catches SIGSEGV).
                SpawnRequest req;
                req.executable = "/bin/cat";
                req.argv = {"cat", "/proc/self/status"};
                req.fds = {{1, out[1]}};
                req.inheritance = how;
                sigemptyset(&req.signal_mask);
                sigaddset(&req.signal_mask, SIGUSR2);
                auto child = spawn(req);
                ::close(out[1]);
                // The standard signals only (1-31): glibc keeps 32 and 33 for itself and cannot
                // reset them, and `make` starts its children with them ignored.
                std::string status;
                std::istringstream lines(read_all(out[0]));
                for (std::string line; std::getline(lines, line);) {
                  for (const char* field : {"SigBlk:", "SigIgn:", "SigCgt:"}) {
                    if (line.rfind(field, 0) != 0) continue;
                    const uint64_t bits = std::stoull(line.substr(std::strlen(field)), nullptr, 16);
                    status += std::string(field) + " " + std::to_string(bits & 0x7fffffffU) + "\n";
                  }
                }
                if (child.wait() != 0) return 11;
                // SIGUSR2 is 1 << 11, SIGHUP 1 << 0.
                const std::string want = like_exec ? "SigBlk: 2048\nSigIgn: 1\nSigCgt: 0\n" : "SigBlk: 0\nSigIgn: 0\nSigCgt: 0\n";
                if (status != want) return 12;
                auto probe = shell("[ -e /proc/self/fd/" + std::to_string(given) + " ]");
                probe.inheritance = how;
                auto prober = spawn(probe);
                const int rc = prober.wait();
                return WIFEXITED(rc) && (WEXITSTATUS(rc) == 0) == like_exec ? 0 : 13;
              }),
              0)
        << (like_exec ? "like_exec" : "clean_slate");
  }
}

TEST(Spawn, DestroyingAnUnwaitedChildKillsAndReapsIt) {
  pid_t pid = 0;
  {
    auto child = spawn(shell("exec sleep 300"));  // exec: the pid is the sleep itself, nothing is left holding our output
    pid = child.pid();
  }
  EXPECT_NE(::kill(pid, 0), 0) << "the child outlived its Child";
}

}  // namespace
}  // namespace holdfast::sys
