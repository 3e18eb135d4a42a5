#include "holdfast/digest.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <vector>

#include "holdfast/error.hpp"
#include "sys/file.hpp"
#include "sys/shared_library.hpp"

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

// OpenSSL's libcrypto is loaded when the first sha256 Hasher is made, not linked: linked (even
// statically) its start-up code runs in every process, and `holdfast lock F -- true` is
// measured against flock(1) per invocation (OPENSSL_cpuid_setup alone executes CPUID, a VM exit
// each, at every start). Only sha256 pays for it. The header gives the types and signatures.
struct CryptoApi {
  EVP_MD_CTX* (*ctx_new)();
  void (*ctx_free)(EVP_MD_CTX*);
  const EVP_MD* (*sha256)();
  int (*init)(EVP_MD_CTX*, const EVP_MD*, ENGINE*);
  int (*update)(EVP_MD_CTX*, const void*, size_t);
  int (*final)(EVP_MD_CTX*, unsigned char*, unsigned int*);
};

const CryptoApi& crypto_api() {
  static const CryptoApi api = [] {
    static const sys::SharedLibrary lib("libcrypto.so.3", "sha256 needs OpenSSL's libcrypto");
    CryptoApi a{};
    lib.bind(a.ctx_new, "EVP_MD_CTX_new");
    lib.bind(a.ctx_free, "EVP_MD_CTX_free");
    lib.bind(a.sha256, "EVP_sha256");
    lib.bind(a.init, "EVP_DigestInit_ex");
    lib.bind(a.update, "EVP_DigestUpdate");
    lib.bind(a.final, "EVP_DigestFinal_ex");
    return a;
  }();
  return api;
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

struct Hasher::State {
  XXH3_state_t* xxh = nullptr;
  EVP_MD_CTX* evp = nullptr;
  ~State() {
    if (xxh != nullptr) XXH3_freeState(xxh);
    if (evp != nullptr) crypto_api().ctx_free(evp);
  }
};

Hasher::Hasher(DigestAlg alg) : alg_(alg), state_(std::make_unique<State>()) {
  if (alg == DigestAlg::xxh128) {
    state_->xxh = XXH3_createState();
    if (state_->xxh == nullptr || XXH3_128bits_reset(state_->xxh) != XXH_OK) throw std::bad_alloc();
  } else {
    const CryptoApi& crypto = crypto_api();
    state_->evp = crypto.ctx_new();
    if (state_->evp == nullptr || crypto.init(state_->evp, crypto.sha256(), nullptr) != 1) {
      throw Error("", "sha256", "OpenSSL EVP_DigestInit_ex failed", exit_code::software);
    }
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
    crypto_api().update(state_->evp, chunk.data(), chunk.size());
  }
}

Digest Hasher::finish() {
  if (alg_ == DigestAlg::xxh128) {
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(state_->xxh));
    return Digest{alg_, to_hex(canon.digest, sizeof canon.digest)};
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (crypto_api().final(state_->evp, md, &len) != 1) {
    throw Error("", "sha256", "OpenSSL EVP_DigestFinal_ex failed", exit_code::software);
  }
  return Digest{alg_, to_hex(md, len)};
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
