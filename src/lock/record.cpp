// Holder record serialisation: one line of JSON, padded with spaces when rewritten in place.
#include <bit>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>

#include "holdfast/lock.hpp"
#include "lock/internal.hpp"

namespace holdfast {

std::string_view to_string(Backend backend) noexcept {
  switch (backend) {
    case Backend::automatic: return "auto";
    case Backend::ofd: return "ofd";
    case Backend::flock: return "flock";
    case Backend::excl: return "excl";
    case Backend::link: return "link";
    case Backend::shm: return "shm";
  }
  return "?";
}

std::string_view to_string(LockMode mode) noexcept {
  return mode == LockMode::exclusive ? "exclusive" : "shared";
}

std::optional<Backend> parse_backend(std::string_view name) noexcept {
  for (Backend b : {Backend::automatic, Backend::ofd, Backend::flock, Backend::excl, Backend::link, Backend::shm}) {
    if (name == to_string(b)) return b;
  }
  if (name == "automatic") return Backend::automatic;
  return std::nullopt;
}

namespace {

template <typename Int>
void append_int(std::string& out, Int value) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  out.append(buf, end);
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid UTF-8.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
  }
  return len;
}

// A JSON string. Bytes that are not UTF-8 (argv may hold any bytes) become U+FFFD: a record must
// always be writable, and its command line is informative only.
void append_string(std::string& out, std::string_view s) {
  out.push_back('"');
  size_t run = 0;  // start of the pending run of bytes copied as they are
  auto flush = [&](size_t i) {
    out.append(s.data() + run, i - run);
  };
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      if (size_t len = utf8_sequence(s, i); len > 0) {
        i += len;
        continue;
      }
    }
    flush(i);
    if (c == '"' || c == '\\') {
      const char esc[] = {'\\', static_cast<char>(c)};
      out.append(esc, sizeof esc);
    } else if (c < 0x20) {
      static constexpr char kHex[] = "0123456789abcdef";
      const char esc[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
      out.append(esc, sizeof esc);
    } else {
      out.append("\xef\xbf\xbd");  // not UTF-8
    }
    run = ++i;
  }
  flush(s.size());
  out.push_back('"');
}

}  // namespace

namespace lock_internal {

namespace {

// The eight decimal digits of `n` (< 10^8), one per byte with values 0-9, the most significant
// in the lowest byte (memory order once stored little-endian). No loop and no table: the number
// is split into two halves of four digits in two 32-bit lanes, each half into two pairs in 16-bit
// lanes, each pair into two digits in bytes, every lane of a step by one multiply and shift
// (x * 10486 >> 20 is x / 100 for x < 10^4; x * 103 >> 10 is x / 10 for x < 100; the products stay
// inside their lanes). This runs three times per grant, where a digit-pair loop cost ~550
// instructions.
[[gnu::always_inline]] inline uint64_t eight_digits(uint32_t n) {
  const uint64_t high = n / 10000;
  uint64_t v = high | (static_cast<uint64_t>(n - high * 10000) << 32);
  uint64_t q = ((v * 10486) >> 20) & 0x0000007f0000007fULL;
  v = q | ((v - q * 100) << 16);
  q = ((v * 103) >> 10) & 0x000f000f000f000fULL;
  return q | ((v - q * 10) << 8);
}

// Stores eight bytes at `p`: `digits` (from eight_digits) as ASCII, shifted so that the first
// `skip` digits are dropped. Returns the end of the 8 - skip digits kept.
[[gnu::always_inline]] inline char* store_digits(char* p, uint64_t digits, unsigned skip) {
  uint64_t text = (digits | 0x3030303030303030ULL) >> (8 * skip);
  if constexpr (std::endian::native == std::endian::big) text = __builtin_bswap64(text);
  std::memcpy(p, &text, sizeof text);
  return p + 8 - skip;
}

// `n` (< 10^8) in decimal without leading zeros ("0" for zero).
[[gnu::always_inline]] inline char* put_leading(char* p, uint32_t n) {
  const uint64_t digits = eight_digits(n);
  const auto skip = n == 0 ? 7U : static_cast<unsigned>(__builtin_ctzll(digits)) / 8;
  return store_digits(p, digits, skip);
}

constexpr uint64_t kTenTo8 = 100000000;

// `high`, a 64-bit value divided by 10^8 (at most 12 digits), in decimal at `p`; returns its end.
// Stores up to 7 bytes beyond that end.
char* put_high(char* p, uint64_t high) {
  if (high < kTenTo8) return put_leading(p, static_cast<uint32_t>(high));
  const uint64_t top = high / kTenTo8;  // < 1845
  p = put_leading(p, static_cast<uint32_t>(top));
  return store_digits(p, eight_digits(static_cast<uint32_t>(high - top * kTenTo8)), 0);
}

// `v` in decimal at `p`; returns its end. Stores up to 7 bytes beyond that end (callers leave
// kDecimalSlack bytes of room). `cache`, when given, holds the digits above the last eight as
// last formatted, and is updated when they changed.
constexpr size_t kDecimalSlack = 8;
[[gnu::always_inline]] inline char* put_decimal(char* p, uint64_t v, RecordHeadCache::High* cache = nullptr) {
  if (v < kTenTo8) return put_leading(p, static_cast<uint32_t>(v));
  const uint64_t high = v / kTenTo8;
  const auto low = static_cast<uint32_t>(v - high * kTenTo8);
  if (cache == nullptr) {
    p = put_high(p, high);
  } else {
    static_assert(sizeof cache->text >= 12 + kDecimalSlack && 16 <= 1 + 8 + kDecimalSlack);
    if (cache->value != high) {
      cache->size = static_cast<size_t>(put_high(cache->text, high) - cache->text);
      cache->value = high;
    }
    std::memcpy(p, cache->text, 16);  // 1-12 digits; what lies past them is overwritten next
    p += cache->size;
  }
  return store_digits(p, eight_digits(low), 0);
}

// Appends the literal `lit` and the decimal `v` at `p`; returns the new end.
template <size_t N>
char* put_field(char* p, const char (&lit)[N], uint64_t v, bool negative = false,
                RecordHeadCache::High* cache = nullptr) {
  std::memcpy(p, lit, N - 1);
  p += N - 1;
  if (negative) *p++ = '-';
  return put_decimal(p, v, cache);
}

}  // namespace

// Formatted into one stack buffer: this runs on every grant.
//
// The token takes kTokenWidth bytes whatever its value: its digits, then spaces (JSON allows
// whitespace after a value). A dotlock is visible with token 0 before its token is issued, and a
// record is rewritten in place; the page cache lets a concurrent reader see the new bytes up to
// any point and the old ones after it. With the token's width fixed, the rewrite changes only the
// token's own bytes, so such a reader still finds the holder's identity intact (or a token that
// does not parse: held). A token of varying width shifted everything after it, and a torn read
// could parse as a record naming another, dead process: a live holder's dotlock was reclaimed.
size_t format_record_head(char* out, uint64_t token, uint64_t nonce, int64_t acquired_unix_ns,
                          RecordHeadCache* cache) {
  // 51 bytes of literals, three numbers of at most 20 digits, a sign, and the last one's slack.
  static_assert(kRecordHeadRoom >= 51 + 3 * 20 + 1 + kDecimalSlack);
  static constexpr char kTokenField[] = "{\"holdfast\":1,\"token\":";
  char* const token_end = out + sizeof kTokenField - 1 + kTokenWidth;
  char* p = put_field(out, kTokenField, token, false, cache ? &cache->token : nullptr);
  // Spaces up to token_end (at most kTokenWidth - 1 of them, and over put_decimal's slack), as
  // one store of fixed size: what lands past token_end is overwritten by the fields that follow,
  // or lies past the head.
  constexpr size_t kSpaceFill = 24;
  static_assert(kTokenWidth - 1 <= kSpaceFill && sizeof kTokenField - 1 + kTokenWidth + kSpaceFill <= kRecordHeadRoom);
  std::memset(p, ' ', kSpaceFill);
  p = put_field(token_end, ",\"nonce\":", nonce, false, cache ? &cache->nonce : nullptr);
  const bool negative = acquired_unix_ns < 0;
  const uint64_t magnitude =
      negative ? uint64_t{0} - static_cast<uint64_t>(acquired_unix_ns) : static_cast<uint64_t>(acquired_unix_ns);
  p = put_field(p, ",\"acquired_unix_ns\":", magnitude, negative, cache ? &cache->time : nullptr);
  return static_cast<size_t>(p - out);
}

void append_record_head(std::string& out, uint64_t token, uint64_t nonce, int64_t acquired_unix_ns) {
  char buf[kRecordHeadRoom];
  out.append(buf, format_record_head(buf, token, nonce, acquired_unix_ns));
}

void append_record_tail(std::string& out, const HolderRecord& record) {
  out.append(",\"backend\":\"");
  out.append(to_string(record.backend));
  out.append("\",\"mode\":\"");
  out.append(to_string(record.mode));
  out.push_back('"');
  if (record.lease_ms > 0) {
    out.append(",\"lease_ms\":");
    append_int(out, record.lease_ms);
  }
  out.append(",\"processes\":[");
  for (size_t i = 0; i < record.processes.size(); ++i) {
    const auto& p = record.processes[i];
    out.append(i == 0 ? "{\"pid\":" : ",{\"pid\":");
    append_int(out, p.pid);
    out.append(",\"start_time\":");
    append_int(out, p.start_time);
    out.append(",\"boot_id\":");
    append_string(out, p.boot_id);
    out.append(",\"host\":");
    append_string(out, p.host);
    if (p.pid_ns != 0) {
      out.append(",\"pid_ns\":");
      append_int(out, p.pid_ns);
    }
    if (p.time_ns != 0) {
      out.append(",\"time_ns\":");
      append_int(out, p.time_ns);
    }
    if (!p.machine_id.empty()) {
      out.append(",\"machine_id\":");
      append_string(out, p.machine_id);
    }
    out.push_back('}');
  }
  out.append("],\"command\":[");
  for (size_t i = 0; i < record.command.size(); ++i) {
    if (i > 0) out.push_back(',');
    append_string(out, record.command[i]);
  }
  out.append("]}\n");
}

}  // namespace lock_internal

// Written by hand rather than through a JSON tree: this runs on every grant, and building and
// dumping a tree cost ~50,000 instructions, ten times the syscalls of the grant itself.
std::string HolderRecord::to_json() const {
  std::string out;
  out.reserve(256 + 96 * processes.size() + 32 * command.size());
  lock_internal::append_record_head(out, token, nonce, acquired_unix_ns);
  lock_internal::append_record_tail(out, *this);
  return out;
}

std::optional<HolderRecord> HolderRecord::parse(std::string_view text) {
  // Records rewritten in place are padded with trailing spaces. A partial record fails to parse
  // and the caller treats the lock as held (fail closed). A torn one (read during a rewrite)
  // either fails to parse or names the writing holder first: a rewrite changes no byte before
  // the processes but the fixed-width token's (format_record_head), and keeps the processes
  // already named in place. Every field is checked for its type inside the try: a record of the
  // wrong shape is "not a record", never an exception.
  auto j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  try {
    auto version = j.find("holdfast");
    if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 1) return std::nullopt;
    HolderRecord r;
    for (const auto& p : j.at("processes")) {
      ProcessIdentity id;
      id.pid = p.at("pid").get<pid_t>();
      id.start_time = p.at("start_time").get<uint64_t>();
      id.boot_id = p.at("boot_id").get<std::string>();
      id.host = p.at("host").get<std::string>();
      id.pid_ns = p.value("pid_ns", uint64_t{0});
      id.time_ns = p.value("time_ns", uint64_t{0});
      id.machine_id = p.value("machine_id", std::string());  // absent in older records: unknown
      r.processes.push_back(std::move(id));
    }
    if (r.processes.empty()) return std::nullopt;
    r.token = j.at("token").get<uint64_t>();
    r.nonce = j.at("nonce").get<uint64_t>();
    auto backend = parse_backend(j.at("backend").get<std::string>());
    if (!backend) return std::nullopt;
    r.backend = *backend;
    r.mode = j.at("mode").get<std::string>() == "shared" ? LockMode::shared : LockMode::exclusive;
    r.acquired_unix_ns = j.at("acquired_unix_ns").get<int64_t>();
    r.command = j.at("command").get<std::vector<std::string>>();
    r.lease_ms = j.value("lease_ms", int64_t{0});
    return r;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::vector<std::string> cap_command(std::vector<std::string> command) {
  size_t total = 0;
  bool truncated = false;
  std::vector<std::string> out;
  for (auto& arg : command) {
    if (out.size() >= kRecordMaxArgs || total >= kRecordMaxCommandBytes) {
      truncated = true;
      break;
    }
    size_t room = std::min(kRecordMaxArgBytes, kRecordMaxCommandBytes - total);
    if (arg.size() > room) {
      // Cut on a UTF-8 boundary so the cut does not turn into a replacement character.
      size_t cut = room;
      while (cut > 0 && (static_cast<unsigned char>(arg[cut]) & 0xc0) == 0x80) --cut;
      arg.resize(cut);
      truncated = true;
    }
    total += arg.size();
    out.push_back(std::move(arg));
  }
  if (truncated) out.emplace_back(kRecordTruncatedMarker);
  return out;
}

}  // namespace holdfast
