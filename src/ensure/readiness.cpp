#include "ensure/readiness.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>

#include "ensure/internal.hpp"
#include "sys/file.hpp"
#include "sys/linkage.hpp"
#include "sys/process.hpp"

namespace holdfast::ensure_detail {

namespace {

int64_t now_ns(clockid_t clock) noexcept {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Socket inodes held open by the instance's processes. `complete` is false if some process of
// the instance could not be inspected.
std::set<uint64_t> instance_socket_inodes(pid_t supervisor, bool& complete) {
  std::set<uint64_t> out;
  complete = true;
  for (const auto& m : descendants_of(supervisor)) {
    std::string dir = "/proc/" + std::to_string(m.pid) + "/fd";
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      if (errno != ENOENT) complete = false;
      continue;
    }
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[64];
      ssize_t n = ::readlinkat(::dirfd(d), e->d_name, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      if (std::strncmp(target, "socket:[", 8) == 0) out.insert(std::strtoull(target + 8, nullptr, 10));
    }
    ::closedir(d);
  }
  return out;
}

// Inodes of listening TCP sockets on `port` (any address), from /proc/net/tcp and tcp6.
std::set<uint64_t> tcp_listeners(uint16_t port) {
  std::set<uint64_t> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    auto text = sys::read_file(table, 16 << 20);
    if (!text) continue;
    std::istringstream in(*text);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state != "0A") continue;  // TCP_LISTEN
      auto colon = local.rfind(':');
      if (colon == std::string::npos) continue;
      if (std::strtoul(local.c_str() + colon + 1, nullptr, 16) != port) continue;
      out.insert(std::strtoull(inode.c_str(), nullptr, 10));
    }
  }
  return out;
}

// Inodes of listening unix stream sockets bound at `path`, from /proc/net/unix.
std::set<uint64_t> unix_listeners(const std::string& path) {
  std::set<uint64_t> out;
  auto text = sys::read_file("/proc/net/unix", 16 << 20);
  if (!text) return out;
  std::istringstream in(*text);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string num, refs, proto, flags, type, st, inode, bound;
    f >> num >> refs >> proto >> flags >> type >> st >> inode >> bound;
    if (bound != path) continue;
    if ((std::strtoul(flags.c_str(), nullptr, 16) & 0x10000) == 0) continue;  // __SO_ACCEPTCON
    out.insert(std::strtoull(inode.c_str(), nullptr, 10));
  }
  return out;
}

bool owned_by_instance(const std::set<uint64_t>& listeners, pid_t supervisor) {
  if (listeners.empty()) return false;
  bool complete = true;
  auto mine = instance_socket_inodes(supervisor, complete);
  for (auto inode : listeners) {
    if (mine.count(inode) != 0) return true;
  }
  return !complete;  // cannot tell: the connect decides (documented)
}

bool connect_unix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  sys::UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return false;
  return ::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

bool connect_to(const sockaddr_storage& addr, socklen_t len) {
  sys::UniqueFd s(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s) return false;
  if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0) return true;
  if (errno != EINPROGRESS) return false;
  pollfd p{s.get(), POLLOUT, 0};
  if (::poll(&p, 1, 200) != 1) return false;
  int err = 0;
  socklen_t elen = sizeof err;
  return ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0;
}

}  // namespace

int64_t coarse_realtime_ns() noexcept { return now_ns(CLOCK_REALTIME_COARSE); }

ReadinessProbe::ReadinessProbe(ReadySpec spec, pid_t supervisor, int64_t not_before_ns)
    : spec_(std::move(spec)), supervisor_(supervisor), not_before_ns_(not_before_ns) {}

bool ReadinessProbe::tcp_connects() {
  // S10: resolve once; while resolution fails, try again at most once a second.
  if (addresses_.empty()) {
    const int64_t now = now_ns(CLOCK_MONOTONIC);
    if (resolved_at_ns_ != 0 && now - resolved_at_ns_ < 1000000000) return false;
    resolved_at_ns_ = now;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (spec_.needs_name_service()) {
      sys::require_dynamic_loader("the host database", "--ready tcp:" + spec_.host);
    } else {
      hints.ai_flags |= AI_NUMERICHOST;  // an address: no name service involved
    }
    addrinfo* res = nullptr;
    if (::getaddrinfo(spec_.host.c_str(), std::to_string(spec_.port).c_str(), &hints, &res) != 0) return false;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      sockaddr_storage ss{};
      std::memcpy(&ss, a->ai_addr, a->ai_addrlen);
      addresses_.push_back(ss);
      lengths_.push_back(a->ai_addrlen);
    }
    ::freeaddrinfo(res);
  }
  for (size_t i = 0; i < addresses_.size(); ++i) {
    if (connect_to(addresses_[i], lengths_[i])) return true;
  }
  return false;
}

bool ReadinessProbe::ready() {
  switch (spec_.kind) {
    case ReadySpec::Kind::tcp:
      return tcp_connects() && owned_by_instance(tcp_listeners(spec_.port), supervisor_);
    case ReadySpec::Kind::unix_socket:
      return connect_unix(spec_.path) && owned_by_instance(unix_listeners(spec_.path), supervisor_);
    case ReadySpec::Kind::file: {
      struct stat st {};
      if (::stat(spec_.path.c_str(), &st) != 0) return false;
      return sys::mtime_ns(st) >= not_before_ns_;
    }
    default: return false;
  }
}

namespace {

bool is_notify_dir_name(const std::string& dir) {
  const auto slash = dir.rfind('/');
  return slash != std::string::npos && slash > 0 && dir.compare(slash + 1, 16, "holdfast-notify.") == 0 &&
         dir.size() > slash + 17;
}

// Removes the directory `marker` names if it is a holdfast-notify.* directory of ours: its socket,
// then the directory itself (rmdir: anything else in it keeps it). Never follows a link.
void remove_abandoned_notify_dir(const std::string& marker) noexcept {
  auto named = sys::read_file(marker, 4096);
  if (!named) return;
  std::string dir = *named;
  while (!dir.empty() && dir.back() == '\n') dir.pop_back();
  struct stat st {};
  if (!dir.starts_with('/') || !is_notify_dir_name(dir) || ::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
      st.st_uid != ::geteuid()) {
    return;
  }
  ::unlink((dir + "/notify").c_str());
  ::rmdir(dir.c_str());
}

}  // namespace

NotifySocket::NotifySocket(const std::string& fallback_dir, std::string marker) : marker_(std::move(marker)) {
  remove_abandoned_notify_dir(marker_);
  // The first of these where we may create a directory and the socket path fits sun_path.
  int err = ENAMETOOLONG;
  std::string where;
  for (const std::string& base : {std::string("/tmp"), std::string("/dev/shm"), fallback_dir}) {
    std::string tmpl = base + "/holdfast-notify.XXXXXX";
    if (tmpl.size() + 7 >= sizeof(sockaddr_un::sun_path)) continue;
    if (::mkdtemp(tmpl.data()) != nullptr) {
      dir_ = tmpl;
      break;
    }
    err = errno;
    where = base;
  }
  if (dir_.empty()) throw Error(err, where.empty() ? fallback_dir : where, "cannot create the sd_notify directory");
  path_ = dir_ + "/notify";
  bind_socket();
  write_marker();
}

NotifySocket::NotifySocket(const TakeOver& old, std::string marker) : marker_(std::move(marker)) {
  const auto slash = old.path.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string() : old.path.substr(0, slash);
  if (dir.empty() || old.path.substr(slash) != "/notify" || old.path.size() >= sizeof(sockaddr_un::sun_path) ||
      !is_notify_dir_name(dir)) {
    throw Error(old.path, "sd_notify socket", "not a holdfast notify socket path", exit_code::data);
  }
  dir_ = dir;
  path_ = old.path;
  // Recreated if its supervisor removed it (stopped with --keep); else it must be ours: a
  // directory (not a link) owned by us, so nobody else's socket is ever unlinked.
  if (::mkdir(dir_.c_str(), 0711) != 0 && errno != EEXIST) throw Error(errno, dir_, "cannot create the sd_notify directory");
  struct stat st {};
  if (::lstat(dir_.c_str(), &st) != 0) throw Error(errno, dir_, "sd_notify directory");
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) {
    throw Error(old.path, "sd_notify socket", "its directory is not ours", exit_code::data);
  }
  ::unlink(path_.c_str());  // the killed supervisor's socket: nobody reads it any more
  bind_socket();
  write_marker();
}

void NotifySocket::write_marker() const noexcept {
  sys::UniqueFd fd(::open(marker_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd) return;
  const std::string line = dir_ + "\n";
  (void)!::write(fd.get(), line.data(), line.size());
}

void NotifySocket::bind_socket() {
  fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd_) throw Error(errno, path_, "sd_notify socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.data(), path_.size());
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw Error(errno, path_, "cannot bind sd_notify socket");
  }
  int one = 1;
  if (::setsockopt(fd_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
    throw Error(errno, path_, "SO_PASSCRED");
  }
  // Reachable by a daemon that drops privileges; guarded by the credential check in receive().
  ::chmod(path_.c_str(), 0666);
  ::chmod(dir_.c_str(), 0711);
}

NotifySocket::~NotifySocket() {
  ::unlink(path_.c_str());
  ::rmdir(dir_.c_str());
  if (sys::read_file(marker_, 4096) == dir_ + "\n") ::unlink(marker_.c_str());
}

std::vector<NotifySocket::Message> NotifySocket::receive(pid_t supervisor, int& rejected, pid_t adopted) {
  std::vector<Message> out;
  for (;;) {
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{buf, sizeof buf - 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return out;  // EAGAIN: drained
    }
    const ucred* cred = nullptr;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        cred = reinterpret_cast<const ucred*>(CMSG_DATA(c));
      }
    }
    const bool of_instance = cred != nullptr && cred->pid > 0 &&
                             (is_descendant(cred->pid, supervisor) ||
                              (adopted > 0 && (cred->pid == adopted || is_descendant(cred->pid, adopted))));
    if (!of_instance) {
      ++rejected;
      continue;
    }
    Message m;
    m.sender = cred->pid;
    std::string_view text(buf, static_cast<size_t>(n));
    while (!text.empty()) {
      auto nl = text.find('\n');
      auto line = text.substr(0, nl);
      if (line == "READY=1") {
        m.ready = true;
      } else if (line.starts_with("STATUS=")) {
        m.has_status = true;
        m.status = std::string(line.substr(7));
      } else if (line == "WATCHDOG=1") {
        m.watchdog = true;
      } else if (line == "WATCHDOG=trigger") {
        m.watchdog_trigger = true;
      } else if (line.starts_with("MAINPID=")) {
        long pid = std::strtol(std::string(line.substr(8)).c_str(), nullptr, 10);
        if (pid > 0) m.main_pid = static_cast<pid_t>(pid);
      }
      if (nl == std::string_view::npos) break;
      text.remove_prefix(nl + 1);
    }
    out.push_back(std::move(m));
  }
}

}  // namespace holdfast::ensure_detail
