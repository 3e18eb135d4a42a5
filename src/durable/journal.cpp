// The pending-write journal: one JSON object per line, replaced whole with atomic_write under
// flock(2) of a sidecar "JOURNAL.lock" (the journal itself is renamed over, so it cannot carry the
// lock).
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sstream>

#include "holdfast/atomic_write.hpp"
#include "holdfast/error.hpp"
#include "holdfast/wait.hpp"
#include "sys/file.hpp"

namespace holdfast {

namespace {

std::string env(const char* name) {
  // holdfast never modifies its environment, so reading it cannot race.
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  return v != nullptr ? v : "";
}

void make_dirs(const std::string& dir) {
  if (dir.empty() || dir == "/" || dir == ".") return;
  struct stat st {};
  if (sys::stat_nothrow(dir, st) == 0) return;
  make_dirs(sys::dirname_of(dir));
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) throw Error(errno, dir, "create journal directory");
}

class JournalLock {
 public:
  explicit JournalLock(const std::string& journal) {
    make_dirs(sys::dirname_of(journal));
    std::string lock = journal + ".lock";
    fd_ = sys::open_or_throw(AT_FDCWD, lock, O_RDWR | O_CREAT | O_NOFOLLOW, 0600, "open journal lock");
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) throw Error(errno, lock, "flock journal lock");
    }
  }  // released by close in ~UniqueFd

 private:
  sys::UniqueFd fd_;
};

std::string serialise(const std::vector<PendingWrite>& entries) {
  std::string out;
  for (const auto& e : entries) {
    nlohmann::json j{{"path", e.path},
                     {"size", e.size},
                     {"digest", e.digest.to_string()},
                     {"time_unix_ns", e.time_unix_ns}};
    if (e.ino != 0) {
      j["ino"] = e.ino;
      j["mtime_ns"] = e.mtime_ns;
    }
    out += j.dump() + "\n";
  }
  return out;
}

void rewrite(const std::string& journal, const std::vector<PendingWrite>& entries) {
  WriteOptions opts;
  opts.mode = 0600;
  atomic_write(journal, serialise(entries), opts);
}

}  // namespace

std::string default_journal_path() {
  if (auto j = env("HOLDFAST_JOURNAL"); !j.empty()) return j;
  if (auto x = env("XDG_STATE_HOME"); !x.empty() && x.front() == '/') return x + "/holdfast/pending.jsonl";
  if (auto h = env("HOME"); !h.empty()) return h + "/.local/state/holdfast/pending.jsonl";
  if (::geteuid() == 0) return "/var/lib/holdfast/pending.jsonl";
  throw Error("", "journal", "no $HOLDFAST_JOURNAL, $XDG_STATE_HOME or $HOME; pass --journal",
              exit_code::usage);
}

std::vector<PendingWrite> journal_read(const std::string& journal) {
  auto text = sys::read_file(journal, kJournalMaxBytes + 1);
  if (!text) {
    if (errno == ENOENT) return {};
    throw Error(errno, journal, "read journal");
  }
  if (text->size() > kJournalMaxBytes) {
    // Never parse (and later rewrite) a prefix: that would silently drop the rest.
    throw Error(journal, "read journal",
                fmt::format("larger than {} MiB; refusing to truncate it (inspect it, or `holdfast wait --clear`)",
                            kJournalMaxBytes >> 20),
                exit_code::data);
  }
  std::vector<PendingWrite> out;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;
    try {
      auto digest = Digest::parse(j.at("digest").get<std::string>());
      if (!digest) continue;
      out.push_back(PendingWrite{j.at("path").get<std::string>(), j.at("size").get<uint64_t>(), *digest,
                                 j.value("time_unix_ns", int64_t{0}), j.value("ino", uint64_t{0}),
                                 j.value("mtime_ns", int64_t{0})});
    } catch (const nlohmann::json::exception&) {
      continue;  // a malformed line never blocks the others
    }
  }
  return out;
}

void journal_record(const std::string& journal, const PendingWrite& write) {
  JournalLock lock(journal);
  auto entries = journal_read(journal);
  std::erase_if(entries, [&](const PendingWrite& e) { return e.path == write.path; });
  if (entries.size() >= kJournalMaxEntries) {
    throw Error(journal, "record",
                fmt::format("the journal already holds {} pending writes (the limit); confirm them with `holdfast wait "
                            "--pending`, or drop them with `--forget PATH` / `--clear`",
                            entries.size()),
                exit_code::temp_fail);
  }
  entries.push_back(write);
  rewrite(journal, entries);
}

void journal_remove(const std::string& journal, const std::vector<PendingWrite>& done) {
  if (done.empty()) return;
  JournalLock lock(journal);
  auto entries = journal_read(journal);
  auto before = entries.size();
  std::erase_if(entries, [&](const PendingWrite& e) { return std::find(done.begin(), done.end(), e) != done.end(); });
  if (entries.size() != before) rewrite(journal, entries);
}

size_t journal_forget(const std::string& journal, const std::vector<std::string>& paths) {
  std::vector<std::string> absolute;
  for (const auto& p : paths) {
    if (!p.empty() && p.front() == '/') {
      absolute.push_back(p);
      continue;
    }
    char* real = ::realpath(sys::dirname_of(p).c_str(), nullptr);
    std::string dir = real != nullptr ? real : sys::dirname_of(p);
    ::free(real);
    absolute.push_back((dir == "/" ? "" : dir) + "/" + sys::basename_of(p));
  }
  JournalLock lock(journal);
  auto entries = journal_read(journal);
  auto before = entries.size();
  std::erase_if(entries, [&](const PendingWrite& e) {
    return std::find(absolute.begin(), absolute.end(), e.path) != absolute.end() ||
           std::find(paths.begin(), paths.end(), e.path) != paths.end();
  });
  if (entries.size() != before) rewrite(journal, entries);
  return before - entries.size();
}

size_t journal_clear(const std::string& journal) {
  JournalLock lock(journal);
  auto entries = journal_read(journal);
  if (!entries.empty()) rewrite(journal, {});
  return entries.size();
}

}  // namespace holdfast
