// Mixed deployment: holdfast lock racing on one file against flock(1), and against python
// filelock, must never let two of them into the critical section at once. The overlap detector
// (a read-modify-write counter plus an owner check on both sides of the write) is first shown to
// catch overlaps when nothing locks.
//
// Rounds per worker: 100 by default (so the suite stays well under a minute on a loaded 2-core
// machine), 25 under HOLDFAST_SANITIZED, and the issue's 2,000 with HOLDFAST_SOAK=1 in the
// environment.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/testing.hpp"

namespace holdfast {
namespace {

using testing::read_file;

int rounds_per_worker() {
  if (const char* soak = std::getenv("HOLDFAST_SOAK"); soak != nullptr && *soak != '\0' && *soak != '0') return 2000;
#ifdef HOLDFAST_SANITIZED
  return 25;
#else
  return 100;
#endif
}

constexpr int kWorkers = 16;

// The critical section, in sh builtins only (so it costs no process of its own): read the
// counter, claim ownership, check it, write counter+1, check ownership again. Two processes
// inside at once lose an increment or see each other's claim.
const std::string kCritical =
    "read n < \"$T/counter\"; echo $$ > \"$T/owner\"; read o < \"$T/owner\"; "
    "[ \"$o\" = $$ ] || echo x >> \"$T/overlaps\"; echo $((n+1)) > \"$T/counter\"; "
    "read o < \"$T/owner\"; [ \"$o\" = $$ ] || echo x >> \"$T/overlaps\"";

// The same in Python, for filelock workers.
const std::string kPythonWorker = R"PY(
import os, sys
from filelock import FileLock
T, rounds = sys.argv[1], int(sys.argv[2])
me = str(os.getpid())
def check():
    with open(T + "/owner") as f:
        if f.read().strip() != me:
            with open(T + "/overlaps", "a") as o: o.write("x\n")
lock = FileLock(T + "/L")
for _ in range(rounds):
    with lock.acquire(poll_interval=0.001):
        with open(T + "/counter") as f: n = int(f.read().strip() or 0)
        with open(T + "/owner", "w") as f: f.write(me)
        check()
        with open(T + "/counter", "w") as f: f.write(str(n + 1) + "\n")
        check()
)PY";

struct Race {
  int counted = 0;
  int expected = 0;
  int overlaps = 0;
  bool clean() const { return counted == expected && overlaps == 0; }
};

// Runs `workers` (each a bash script using $T, $HF, $R and $CRIT), released at once; each worker
// does R rounds of the critical section.
Race race(const testing::TempDir& dir, const std::vector<std::string>& workers, int rounds) {
  std::ofstream(dir / "counter") << "0\n";
  std::ofstream(dir / "overlaps") << "";
  std::ofstream(dir / "worker.py") << kPythonWorker;
  testing::StartGun gun;
  std::vector<pid_t> pids;
  for (const std::string& script : workers) {
    pids.push_back(testing::fork_child([&]() -> int {
      gun.wait();
      std::vector<std::string> argv{"env", "T=" + dir.path(), "HF=" + testing::holdfast_path(),
                                    "R=" + std::to_string(rounds), "CRIT=" + kCritical, "bash", "-c", script};
      testing::exec_argv(argv);
    }));
  }
  gun.release();
  for (pid_t p : pids) EXPECT_EQ(testing::wait_child(p), 0);
  Race r;
  r.counted = std::atoi(read_file(dir / "counter").c_str());
  r.expected = static_cast<int>(workers.size()) * rounds;
  const std::string overlaps = read_file(dir / "overlaps");
  r.overlaps = static_cast<int>(std::count(overlaps.begin(), overlaps.end(), '\n'));
  return r;
}

const std::string kFlock1Worker = "for ((i = 0; i < R; i++)); do /usr/bin/flock \"$T/L\" sh -c \"$CRIT\" || exit 1; done";
const std::string kHoldfastWorker = "for ((i = 0; i < R; i++)); do \"$HF\" lock \"$T/L\" sh -c \"$CRIT\" || exit 1; done";
// The FD form: acquire now, release later, in the worker's own shell.
const std::string kHoldfastFdWorker =
    "exec 9>>\"$T/L\"; for ((i = 0; i < R; i++)); do \"$HF\" lock 9 || exit 1; eval \"$CRIT\"; "
    "\"$HF\" lock -u 9 || exit 1; done";
const std::string kPythonFilelockWorker = "exec /usr/bin/python3 \"$T/worker.py\" \"$T\" \"$R\"";
// The control: the same critical section with no lock at all.
const std::string kUnlockedWorker = "for ((i = 0; i < R; i++)); do sh -c \"$CRIT\"; done";

// A detector that cannot fail proves nothing: without a lock, the same race is caught.
TEST(LockMixedDeployment, DetectorCatchesOverlapsWithoutALock) {
  testing::TempDir dir;
  bool caught = false;
  for (int batch = 0; batch < 20 && !caught; ++batch) {
    caught = !race(dir, std::vector<std::string>(kWorkers, kUnlockedWorker), 25).clean();
  }
  EXPECT_TRUE(caught) << "the overlap detector never fired without a lock";
}

// And it catches the real defect this test guards against (review C3): holdfast on OFD locks,
// which do not conflict with flock(1)'s flock(2) locks, lets both in.
TEST(LockMixedDeployment, DetectorCatchesOfdAgainstFlock1) {
  if (::access("/usr/bin/flock", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/flock";
  testing::TempDir dir;
  const std::string ofd_worker =
      "for ((i = 0; i < R; i++)); do \"$HF\" lock --backend ofd \"$T/L\" sh -c \"$CRIT\" || exit 1; done";
  std::vector<std::string> workers;
  for (int i = 0; i < kWorkers; ++i) workers.push_back(i % 2 == 0 ? kFlock1Worker : ofd_worker);
  bool caught = false;
  for (int batch = 0; batch < 20 && !caught; ++batch) caught = !race(dir, workers, 25).clean();
  EXPECT_TRUE(caught) << "OFD holdfast and flock(1) never overlapped: the detector cannot see C3";
}

TEST(LockMixedDeployment, Flock1AndHoldfastExcludeEachOther) {
  if (::access("/usr/bin/flock", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/flock";
  testing::TempDir dir;
  std::vector<std::string> workers;
  for (int i = 0; i < kWorkers; ++i) {
    workers.push_back(i % 2 == 0 ? kFlock1Worker : i % 4 == 1 ? kHoldfastWorker : kHoldfastFdWorker);
  }
  Race r = race(dir, workers, rounds_per_worker());
  EXPECT_EQ(r.overlaps, 0);
  EXPECT_EQ(r.counted, r.expected);
}

TEST(LockMixedDeployment, PythonFilelockAndHoldfastExcludeEachOther) {
  if (testing::run({"/usr/bin/python3", "-c", "import filelock"}).exit_code != 0) {
    GTEST_SKIP() << "python3-filelock is not installed (deps/debian-packages.txt)";
  }
  testing::TempDir dir;
  std::vector<std::string> workers;
  for (int i = 0; i < kWorkers; ++i) workers.push_back(i % 2 == 0 ? kPythonFilelockWorker : kHoldfastWorker);
  Race r = race(dir, workers, rounds_per_worker());
  EXPECT_EQ(r.overlaps, 0);
  EXPECT_EQ(r.counted, r.expected);
}

}  // namespace
}  // namespace holdfast
