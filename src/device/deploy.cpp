// deploy: write → push the flush → verify the board's own view → soft-reboot → see it start.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>
#include <sstream>
#include <thread>

#include "device/internal.hpp"
#include "holdfast/atomic_write.hpp"
#include "holdfast/device.hpp"
#include "holdfast/digest.hpp"
#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/page_cache.hpp"

namespace holdfast::device {

namespace detail {

uint32_t crc32(std::string_view data, uint32_t crc) noexcept {
  // The zlib/binascii CRC-32 (reflected 0xEDB88320), bitwise: only used on the verify path.
  crc = ~crc;
  for (char ch : data) {
    crc ^= static_cast<unsigned char>(ch);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1U) ^ (0xEDB88320U & (0U - (crc & 1U)));
  }
  return ~crc;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    out += kDigits[u >> 4U];
    out += kDigits[u & 15U];
  }
  return out;
}

std::string sha256_hex(std::string_view data) { return digest_bytes(DigestAlg::sha256, data).hex; }

std::string py_str(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u >= 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace detail

namespace {

using detail::Clock;
using std::chrono::milliseconds;

milliseconds since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

std::string read_source(const std::string& path) {
  auto fd = sys::open_or_throw(AT_FDCWD, path, O_RDONLY, 0, "open source");
  auto data = sys::pread_all(fd.get());
  if (!data) throw Error(errno, path, "read source");
  return std::move(*data);
}

// The snippet that reports the board's own view of PATH: size from os.stat, then a full read
// hashed with hashlib.sha256, else binascii.crc32, else the bytes in hex for the host to compare.
// Valid MicroPython, CircuitPython and CPython. Prints "HFV SIZE READ METHOD DIGEST" or
// "HFV missing", preceded by "HFB HEX" lines in readback mode.
std::string verify_snippet(const std::string& board_path, VerifyMethod method) {
  const char* mode = method == VerifyMethod::sha256   ? "sha256"
                     : method == VerifyMethod::crc32  ? "crc32"
                     : method == VerifyMethod::readback ? "readback"
                                                       : "auto";
  return fmt::format(R"(def _hfv(p, m):
    import os
    try:
        s = os.stat(p)[6]
    except OSError:
        print('HFV missing')
        return
    h = None
    if m in ('auto', 'sha256'):
        try:
            import hashlib
            h = hashlib.sha256()
            m = 'sha256'
        except (ImportError, AttributeError):
            if m == 'sha256':
                raise
            m = 'auto'
    import binascii
    if m == 'auto':
        m = 'crc32' if hasattr(binascii, 'crc32') else 'readback'
    c = 0
    n = 0
    f = open(p, 'rb')
    try:
        while True:
            b = f.read(2048)
            if not b:
                break
            n += len(b)
            if m == 'sha256':
                h.update(b)
            elif m == 'crc32':
                c = binascii.crc32(b, c)
            else:
                print('HFB', binascii.hexlify(b).decode())
    finally:
        f.close()
    if m == 'sha256':
        d = binascii.hexlify(h.digest()).decode()
    elif m == 'crc32':
        d = '%08x' % (c & 0xffffffff)
    else:
        d = '-'
    print('HFV', s, n, m, d)
_hfv({}, {})
del _hfv
)",
                     detail::py_str(board_path), detail::py_str(mode));
}

}  // namespace

BoardView check_board_view(RawRepl& repl, const std::string& board_path, std::string_view data,
                           VerifyMethod method) {
  const std::string sha = detail::sha256_hex(data);
  auto r = repl.exec(verify_snippet(board_path, method));
  BoardView v;
  if (!r.err.empty()) {
    // An OSError while reading (EIO: the board read half-flushed sectors) is "not yet".
    std::string e = r.err;
    while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.pop_back();
    v.differs = "board read failed: " + e.substr(e.rfind('\n') == std::string::npos ? 0 : e.rfind('\n') + 1);
    return v;
  }
  std::istringstream lines(r.out);
  std::string line;
  std::string readback;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("HFB ", 0) == 0) readback += line.substr(4);
    if (line == "HFV missing") {
      v.differs = "missing on the board";
      return v;
    }
    if (line.rfind("HFV ", 0) == 0) {
      std::istringstream f(line.substr(4));
      std::string digest;
      f >> v.size >> v.read >> v.method >> digest;
      v.exists = true;
      if (v.size != data.size()) {
        v.differs = fmt::format("size {}/{}", v.size, data.size());
      } else if (v.read != data.size()) {
        v.differs = fmt::format("read {} of {} bytes", v.read, data.size());
      } else if (v.method == "sha256" && digest != sha) {
        v.differs = fmt::format("sha256 {}…, expected {}…", digest.substr(0, 12), sha.substr(0, 12));
      } else if (v.method == "crc32" && digest != fmt::format("{:08x}", detail::crc32(data))) {
        v.differs = fmt::format("crc32 {}, expected {:08x}", digest, detail::crc32(data));
      } else if (v.method == "readback" && readback != detail::to_hex(data)) {
        v.differs = "read-back content differs";
      } else if (v.method != "sha256" && v.method != "crc32" && v.method != "readback") {
        v.differs = "unrecognised answer: " + line;
      } else {
        v.matched = true;
      }
      return v;
    }
  }
  v.differs = "no answer from the verify snippet";
  return v;
}

namespace {

// Pushes the file's dirty pages out from the host: sync_file_range first (starts and waits for the
// data pages, so the flush can be watched page by page), then holdfast::sync_path (fsync of the
// file, of its directory and, on journal-less filesystems such as the board's FAT, of the block
// device under the mount). One difference from sync_path, kept on purpose: the block device under
// the mount is fsynced on every filesystem (a second, cheap fsync where sync_path already did it),
// and `note` says so when there is none that can be flushed. Throws DeviceError: io_error (74)
// when a flush fails, sync_path's exit code when the file cannot be opened.
void push_flush(const std::string& file, const std::function<void(const std::string&)>& note) {
  struct stat st{};
  {
    auto fd = sys::open_or_throw(AT_FDCWD, file, O_RDONLY, 0, "open for flush");
    if (int r = sys::write_out_range(fd.get()); r < 0 && r != -ESPIPE && r != -EINVAL)
      throw DeviceError(fmt::format("{}: sync_file_range: {}", file, std::strerror(-r)), holdfast::exit_code::io_error);
    if (int r = sys::fstat_nothrow(fd.get(), st); r < 0)
      throw DeviceError(fmt::format("{}: fstat: {}", file, std::strerror(-r)), holdfast::exit_code::io_error);
  }
  try {
    sync_path(file);
  } catch (const Error& e) {
    throw DeviceError(e.what(), e.exit_code());
  }
  std::string dev = sys::block_device_path(st.st_dev);
  if (dev.empty()) {
    note("no block device found under the mount; file and directory fsynced");
    return;
  }
  int bfd = sys::open_nothrow(AT_FDCWD, dev, O_RDONLY | O_NONBLOCK);
  if (bfd < 0) {
    note(fmt::format("{}: {} (block device not flushed)", dev, std::strerror(-bfd)));
    return;
  }
  sys::UniqueFd owned(bfd);
  if (int r = sys::fsync_nothrow(bfd); r < 0)
    throw DeviceError(fmt::format("{}: fsync: {}", dev, std::strerror(-r)), holdfast::exit_code::io_error);
}

// True when cachestat proves the host holds no dirty or writeback page of `path`.
bool host_pages_clean(const std::string& path) {
  sys::UniqueFd f(sys::open_nothrow(AT_FDCWD, path, O_RDONLY));
  sys::PageCacheStat pc;
  return f && sys::cachestat_nothrow(f.get(), pc) == 0 && pc.dirty + pc.writeback == 0;
}

// Board-side temp file of an over-the-REPL deploy; removed on the board unless committed.
class BoardTemp {
 public:
  BoardTemp(RawRepl& repl, std::string path) : repl_(repl), path_(std::move(path)) {}
  BoardTemp(const BoardTemp&) = delete;
  BoardTemp& operator=(const BoardTemp&) = delete;
  ~BoardTemp() {
    if (committed_) return;
    try {
      // The board may be mid-command after a failure: re-enter the raw REPL first.
      repl_.enter();
      repl_.exec(fmt::format("import os\ntry:\n    _hff.close()\nexcept Exception:\n    pass\n"
                             "try:\n    os.remove({})\nexcept OSError:\n    pass\n",
                             detail::py_str(path_)));
    } catch (...) {  // NOLINT(bugprone-empty-catch): best effort; the name is fixed, so the next deploy overwrites it
    }
  }
  void commit() { committed_ = true; }
  const std::string& path() const { return path_; }

 private:
  RawRepl& repl_;
  std::string path_;
  bool committed_ = false;
};

[[noreturn]] void rethrow_board_error(const ExecResult& r, const std::string& what) {
  std::string e = r.err;
  while (!e.empty() && (e.back() == '\n' || e.back() == '\r')) e.pop_back();
  std::string last = e.substr(e.rfind('\n') == std::string::npos ? 0 : e.rfind('\n') + 1);
  if (last.find("Errno 30") != std::string::npos || last.find("EROFS") != std::string::npos) {
    throw DeviceError(fmt::format("{}: the board's filesystem is read-only to code ({}); on CircuitPython the "
                                  "USB drive owns it: deploy with --drive MOUNT",
                                  what, last),
                      holdfast::exit_code::cant_create);
  }
  throw DeviceError(fmt::format("{}: the board raised: {}", what, last), exit_code::board_exception);
}

void write_over_repl(RawRepl& repl, const std::string& dest, std::string_view data,
                     const DeployOptions& options) {
  BoardTemp temp(repl, dest + ".holdfast-tmp");
  auto r = repl.exec(fmt::format("import binascii\n_hff = open({}, 'wb')\n", detail::py_str(temp.path())));
  if (!r.err.empty()) rethrow_board_error(r, "open " + temp.path());
  constexpr size_t kChunk = 4096;  // 8 KiB of hex source per exec: fits any board's heap
  for (size_t off = 0; off < data.size(); off += kChunk) {
    auto piece = data.substr(off, kChunk);
    r = repl.exec(fmt::format("_hff.write(binascii.unhexlify('{}'))\n", detail::to_hex(piece)));
    if (!r.err.empty()) rethrow_board_error(r, "write " + temp.path());
    if (options.on_progress)
      options.on_progress("write", fmt::format("{}/{} bytes over the REPL", off + piece.size(), data.size()));
  }
  // Close, then replace atomically: os.rename over an existing file (MicroPython's FAT driver
  // removes the target first, littlefs replaces atomically); sync if the port has os.sync.
  r = repl.exec(fmt::format(
      "import os\n_hff.close()\ndel _hff\nif os.stat({0})[6] != {2}:\n    raise OSError(5)\n"
      "os.rename({0}, {1})\nif hasattr(os, 'sync'):\n    os.sync()\n",
      detail::py_str(temp.path()), detail::py_str(dest), data.size()));
  if (!r.err.empty()) rethrow_board_error(r, "rename " + temp.path());
  temp.commit();
}

}  // namespace

DeployResult deploy(const std::string& source, const std::string& dest_arg, const DeployOptions& options) {
  const auto start = Clock::now();
  auto progress = [&](std::string_view phase, const std::string& detail) {
    if (options.on_progress) options.on_progress(phase, detail);
  };
  DeployResult result;
  const std::string data = read_source(source);
  result.size = data.size();
  result.sha256 = detail::sha256_hex(data);
  std::string dest = dest_arg.empty() ? sys::basename_of(source) : dest_arg;
  // The board's path (absolute on the board) and, with a drive, the host's path of the same file.
  std::string board_path = dest.front() == '/' ? dest : "/" + dest;
  result.dest = board_path;
  if (options.port.empty())
    throw DeviceError("deploy needs --port: the board's own view is checked over its REPL",
                      holdfast::exit_code::usage);

  progress("connect", options.port);
  Port port = Port::open(options.port, options.port_options);
  // Known while the port exists, to find the board again if a reset re-enumerates it.
  const std::string usb_serial = usb_serial_of_port(options.port);
  RawRepl repl(port.fd(), options.repl);
  // Entering the REPL also turns CircuitPython's auto-reload off, so the host's write below does
  // not restart the board mid-way; we reboot it ourselves once the board sees the new file.
  repl.enter();

  auto t = Clock::now();
  std::string host_path;
  if (!options.drive.empty()) {
    host_path = options.drive + board_path;
    progress("write", fmt::format("{} bytes to {}", data.size(), host_path));
    WriteOptions w;
    w.sync = false;  // the flush is pushed below, step by step, so it can be watched and measured
    atomic_write(host_path, data, w);
  } else {
    write_over_repl(repl, board_path, data, options);
  }
  result.write_ms = since(t);

  t = Clock::now();
  if (!host_path.empty()) {
    sys::UniqueFd watch(sys::open_nothrow(AT_FDCWD, host_path, O_RDONLY));
    auto note_pages = [&](std::string_view phase) {
      sys::PageCacheStat pc;
      if (watch && sys::cachestat_nothrow(watch.get(), pc) == 0) {
        result.dirty_pages_seen = std::max(result.dirty_pages_seen, pc.dirty + pc.writeback);
        progress(phase, fmt::format("host page cache: {} dirty, {} under writeback, {} cached pages", pc.dirty,
                                    pc.writeback, pc.cached));
      }
    };
    note_pages("flush");
    if (options.push_flush) {
      push_flush(host_path, [&](const std::string& n) { progress("flush", n); });
      result.pushed = true;
      note_pages("flush");
    }
  }
  result.flush_ms = since(t);

  // Poll the board's view with backoff: 20 ms doubling to 1 s.
  t = Clock::now();
  auto deadline = t + options.flush_timeout;
  milliseconds pause{20};
  BoardView view;
  for (;;) {
    view = check_board_view(repl, board_path, data, options.verify);
    ++result.checks;
    progress("verify", fmt::format("check {}: {}", result.checks, view.matched ? "board sees the new file" : view.differs));
    if (view.matched) break;
    if (Clock::now() + pause > deadline) {
      bool complete_but_different = view.exists && view.size == data.size() && view.read == data.size();
      bool host_clean = host_path.empty() || host_pages_clean(host_path);
      if (complete_but_different && host_clean)
        throw DeviceError(fmt::format("{}: digest mismatch: the board reads {} complete bytes, but {}", board_path,
                                      view.size, view.differs),
                          exit_code::digest_mismatch);
      throw DeviceError(fmt::format("{}: flush timeout after {}: the board still sees {}", board_path,
                                    fmt::format("{:.1f}s", static_cast<double>(since(t).count()) / 1000.0), view.differs),
                        exit_code::flush_timeout);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds(1000));
  }
  result.verified_by = view.method;
  result.verify_ms = since(t);

  if (options.reboot) {
    t = Clock::now();
    progress("reboot", "soft reboot");
    try {
      repl.soft_reboot(options.reboot_timeout, &result.reboot_transcript);
    } catch (const DeviceError& e) {
      // The file is verified on the board, so a reset here is safe to follow: find the board by its
      // USB serial under whatever name it came back as, and see it reboot there.
      if (e.exit_code() != exit_code::board_reset || options.reconnect_timeout.count() <= 0) throw;
      if (usb_serial.empty())
        throw DeviceError(std::string(e.what()) + " (no USB serial number known to follow it)", exit_code::board_reset);
      progress("reboot", "the port went away; waiting for USB serial " + usb_serial);
      port = reopen_by_serial(usb_serial, options.reconnect_timeout, options.port_options);
      result.reconnected = port.path();
      RawRepl again(port.fd(), options.repl);
      again.enter();
      again.soft_reboot(options.reboot_timeout, &result.reboot_transcript);
    }
    result.rebooted = true;
    result.reboot_ms = since(t);
  }
  result.total_ms = since(start);
  return result;
}

}  // namespace holdfast::device
