// holdfast digests — content fingerprints for durable hand-offs.
//
// Two algorithms: XXH3-128 (the default: fast, 128-bit, not cryptographic — it detects torn,
// stale or partial content, not an adversary) and SHA-256 (cryptographic; interoperates with
// sha256sum). A digest is written "ALG:HEX" (e.g. "xxh128:9a4f..."), the format `holdfast wait
// --digest` takes; HEX alone is what sha256sum / xxhsum -H2 print for the same content.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace holdfast {

enum class DigestAlg { xxh128, sha256 };

// "xxh128" / "sha256".
std::string_view to_string(DigestAlg alg) noexcept;
// Accepts "xxh128", "xxh3-128", "xxh3_128", "xxh3", "sha256", "sha-256" (case-insensitive).
std::optional<DigestAlg> parse_digest_alg(std::string_view name) noexcept;
// Length of the lowercase hex form: 32 for xxh128, 64 for sha256.
size_t hex_length(DigestAlg alg) noexcept;

struct Digest {
  DigestAlg alg = DigestAlg::xxh128;
  std::string hex;  // lowercase; XXH3-128 in canonical (big-endian) order, as xxhsum prints it

  // "ALG:HEX".
  std::string to_string() const;
  // Parses "ALG:HEX" (hex of the algorithm's exact length, any case). nullopt otherwise.
  static std::optional<Digest> parse(std::string_view text);
  friend bool operator==(const Digest&, const Digest&) = default;
};

// The BSD / `--tag` line coreutils (`sha256sum --tag`), xxhsum and openssl print:
// "SHA256 (NAME) = HEX", "XXH128 (NAME) = HEX".
struct TaggedDigest {
  Digest digest;
  std::string name;
};
// Parses one such line (trailing CR/LF allowed; ALG case-insensitive). nullopt if it is not one.
std::optional<TaggedDigest> parse_tagged_line(std::string_view line);
// "SHA256 (NAME) = HEX" / "XXH128 (NAME) = HEX".
std::string tagged_line(const Digest& digest, std::string_view name);

// Incremental hashing. Feed any number of chunks, then finish() once.
class Hasher {
 public:
  explicit Hasher(DigestAlg alg);
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  ~Hasher();

  void update(std::string_view chunk) noexcept;
  // The digest of everything fed so far. The Hasher must not be used afterwards.
  Digest finish();
  DigestAlg alg() const noexcept { return alg_; }

  struct State;  // implementation detail

 private:
  DigestAlg alg_;
  std::unique_ptr<State> state_;
};

// The digest of `data`.
Digest digest_bytes(DigestAlg alg, std::string_view data);

struct ContentDigest {
  uint64_t size = 0;  // bytes actually read (not st_size)
  Digest digest;
};

// Reads `fd` from its current offset to EOF with a large buffer and hashes what it read. If it
// returns normally, `size` is the number of bytes hashed. Throws holdfast::Error(errno, name,
// "read") on a read error.
ContentDigest digest_fd(int fd, DigestAlg alg, const std::string& name);
// As digest_fd for the file at `path` ("-" is stdin). Throws holdfast::Error if it cannot be
// opened (ENOENT -> exit 66, EACCES -> 77, EISDIR -> 73) or read.
ContentDigest digest_file(const std::string& path, DigestAlg alg);

}  // namespace holdfast
