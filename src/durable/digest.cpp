#include "holdfast/digest.hpp"

#include <fcntl.h>
#include <nettle/sha2.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <vector>

#include "holdfast/error.hpp"
#include "sys/file.hpp"

namespace holdfast {

namespace {
constexpr size_t kReadBuffer = size_t{1} << 20;  // large reads: fewer syscalls, readahead-friendly

std::string to_hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 0xf];
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool all_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
}
}  // namespace

std::string_view to_string(DigestAlg alg) noexcept {
  return alg == DigestAlg::sha256 ? "sha256" : "xxh128";
}

std::optional<DigestAlg> parse_digest_alg(std::string_view name) noexcept {
  std::string n;
  for (char c : name) n += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (n == "xxh128" || n == "xxh3-128" || n == "xxh3_128" || n == "xxh3") return DigestAlg::xxh128;
  if (n == "sha256" || n == "sha-256") return DigestAlg::sha256;
  return std::nullopt;
}

size_t hex_length(DigestAlg alg) noexcept { return alg == DigestAlg::sha256 ? 64 : 32; }

std::string Digest::to_string() const { return std::string(holdfast::to_string(alg)) + ":" + hex; }

std::optional<Digest> Digest::parse(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  auto alg = parse_digest_alg(text.substr(0, colon));
  if (!alg) return std::nullopt;
  auto hex = text.substr(colon + 1);
  if (hex.size() != hex_length(*alg) || !all_hex(hex)) return std::nullopt;
  return Digest{*alg, lower(hex)};
}

std::optional<TaggedDigest> parse_tagged_line(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  auto open = line.find(" (");
  auto close = line.rfind(") = ");
  if (open == std::string_view::npos || close == std::string_view::npos || close < open + 2) return std::nullopt;
  auto d = Digest::parse(std::string(line.substr(0, open)) + ":" + std::string(line.substr(close + 4)));
  if (!d) return std::nullopt;
  return TaggedDigest{*d, std::string(line.substr(open + 2, close - open - 2))};
}

std::string tagged_line(const Digest& digest, std::string_view name) {
  std::string alg = digest.alg == DigestAlg::sha256 ? "SHA256" : "XXH128";
  return alg + " (" + std::string(name) + ") = " + digest.hex;
}

// sha256 is GNU Nettle's, linked (statically in the static `holdfast`): SHA-NI where the CPU has
// it, chosen once per process (docs/PERFORMANCE.md, "The static command").
struct Hasher::State {
  XXH3_state_t* xxh = nullptr;
  sha256_ctx sha{};
  ~State() {
    if (xxh != nullptr) XXH3_freeState(xxh);
  }
};

Hasher::Hasher(DigestAlg alg) : alg_(alg), state_(std::make_unique<State>()) {
  if (alg == DigestAlg::xxh128) {
    state_->xxh = XXH3_createState();
    if (state_->xxh == nullptr || XXH3_128bits_reset(state_->xxh) != XXH_OK) throw std::bad_alloc();
  } else {
    sha256_init(&state_->sha);
  }
}

Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;
Hasher::~Hasher() = default;

void Hasher::update(std::string_view chunk) noexcept {
  if (chunk.empty()) return;
  if (alg_ == DigestAlg::xxh128) {
    XXH3_128bits_update(state_->xxh, chunk.data(), chunk.size());
  } else {
    sha256_update(&state_->sha, chunk.size(), reinterpret_cast<const uint8_t*>(chunk.data()));  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast): bytes
  }
}

Digest Hasher::finish() {
  if (alg_ == DigestAlg::xxh128) {
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(state_->xxh));
    return Digest{alg_, to_hex(canon.digest, sizeof canon.digest)};
  }
  unsigned char md[SHA256_DIGEST_SIZE];
  sha256_digest(&state_->sha, sizeof md, md);
  return Digest{alg_, to_hex(md, sizeof md)};
}

Digest digest_bytes(DigestAlg alg, std::string_view data) {
  Hasher h(alg);
  h.update(data);
  return h.finish();
}

ContentDigest digest_fd(int fd, DigestAlg alg, const std::string& name) {
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // advisory; fails harmlessly on pipes
  Hasher h(alg);
  // Not zero-filled: only the pages a read touches are faulted in (small files stay cheap).
  std::unique_ptr<char[]> buf(new char[kReadBuffer]);
  uint64_t size = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.get(), kReadBuffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(errno, name, "read");
    }
    if (n == 0) break;
    h.update(std::string_view(buf.get(), static_cast<size_t>(n)));
    size += static_cast<uint64_t>(n);
  }
  return ContentDigest{size, h.finish()};
}

ContentDigest digest_file(const std::string& path, DigestAlg alg) {
  if (path == "-") return digest_fd(STDIN_FILENO, alg, "-");
  auto fd = sys::open_or_throw(AT_FDCWD, path, O_RDONLY | O_NOCTTY, 0, "open");
  struct stat st {};
  if (sys::fstat_nothrow(fd.get(), st) == 0 && S_ISDIR(st.st_mode)) {
    throw Error(EISDIR, path, "digest");
  }
  return digest_fd(fd.get(), alg, path);
}

}  // namespace holdfast
