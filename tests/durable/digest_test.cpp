// Digests: known vectors, the library against libxxhash directly, the sha256sum-style CLI.
#include <xxhash.h>

#include <gtest/gtest.h>

#include "holdfast/digest.hpp"
#include "holdfast/error.hpp"
#include "support/testing.hpp"
#include "util.hpp"

using namespace holdfast;
using namespace holdfast::testing;
using namespace holdfast::testing::durable;

namespace {

std::string xxh128_reference(const std::string& data) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(data.data(), data.size()));
  std::string hex;
  char buf[3];
  for (unsigned char b : c.digest) {
    std::snprintf(buf, sizeof buf, "%02x", b);
    hex += buf;
  }
  return hex;
}

TEST(Digest, Sha256KnownVectors) {
  EXPECT_EQ(digest_bytes(DigestAlg::sha256, "abc").hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(digest_bytes(DigestAlg::sha256, "").hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(digest_bytes(DigestAlg::sha256, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex,
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Digest, Xxh128MatchesLibxxhashDirectly) {
  for (size_t n : {size_t{0}, size_t{3}, size_t{240}, size_t{4097}, size_t{3} << 20}) {
    std::string data = pattern(n, n + 7);
    std::string want = xxh128_reference(data);
    EXPECT_EQ(digest_bytes(DigestAlg::xxh128, data).hex, want) << n;
    // Streaming in odd chunks gives the same answer.
    Hasher h(DigestAlg::xxh128);
    for (size_t off = 0; off < n; off += 1237) h.update(std::string_view(data).substr(off, 1237));
    EXPECT_EQ(h.finish().hex, want) << n;
  }
  EXPECT_EQ(digest_bytes(DigestAlg::xxh128, "abc").hex, xxh128_reference("abc"));
}

TEST(Digest, FileDigestStreamsLargeFiles) {
  TempDir dir;
  std::string data = pattern(5u << 20, 42);
  spit(dir / "big", data);
  auto d = digest_file(dir / "big", DigestAlg::sha256);
  EXPECT_EQ(d.size, data.size());
  EXPECT_EQ(d.digest, digest_bytes(DigestAlg::sha256, data));
  EXPECT_THROW(digest_file(dir / "missing", DigestAlg::sha256), Error);
  try {
    digest_file(dir.path(), DigestAlg::xxh128);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code::cant_create);
  }
}

TEST(Digest, ParseAndFormat) {
  auto d = Digest::parse("SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->alg, DigestAlg::sha256);
  EXPECT_EQ(d->to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(Digest::parse("xxh3-128:06b05ab6733a618578af5f94892f3950"));
  EXPECT_FALSE(Digest::parse("sha256:abc"));          // wrong length
  EXPECT_FALSE(Digest::parse("md5:900150983cd24fb0d6963f7d28e17f72"));
  EXPECT_FALSE(Digest::parse("xxh128:zzb05ab6733a618578af5f94892f3950"));
  EXPECT_FALSE(Digest::parse("06b05ab6733a618578af5f94892f3950"));
}

TEST(DigestCli, OutputLikeSha256sum) {
  TempDir dir;
  spit(dir / "a", "abc");
  spit(dir / "b", pattern(100000, 1));
  auto r = hf({"digest", "--alg", "sha256", dir / "a", dir / "b"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ref = run({"sha256sum", dir / "a", dir / "b"});
  EXPECT_EQ(r.out, ref.out);
  auto x = hf({"digest", dir / "a"});
  EXPECT_EQ(x.out, xxh128_reference("abc") + "  " + (dir / "a") + "\n");
  auto tag = hf({"digest", "--prefixed", dir / "a"});
  EXPECT_EQ(tag.out, "xxh128:" + xxh128_reference("abc") + "  " + (dir / "a") + "\n");
  // D12: --tag is coreutils' BSD form, byte for byte.
  EXPECT_EQ(hf({"digest", "--tag", "-a", "sha256", dir / "a"}).out, run({"sha256sum", "--tag", dir / "a"}).out);
  EXPECT_EQ(hf({"digest", "--tag", dir / "a"}).out, "XXH128 (" + (dir / "a") + ") = " + xxh128_reference("abc") + "\n");
  auto in = hf({"digest", "-a", "sha256", "-"}, "abc");
  EXPECT_EQ(in.out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -\n");
  auto missing = hf({"digest", dir / "nope"});
  EXPECT_EQ(missing.exit_code, exit_code::no_input);
  EXPECT_NE(missing.err.find(dir / "nope"), std::string::npos);
  EXPECT_EQ(hf({"digest", "--alg", "md5", dir / "a"}).exit_code, exit_code::usage);
}

TEST(DigestCli, CheckPassesAndFails) {
  TempDir dir;
  spit(dir / "a", "abc");
  spit(dir / "b", "def");
  for (std::string alg : {"sha256", "xxh128"}) {
    auto list = hf({"digest", "--alg", alg, dir / "a", dir / "b"});
    ASSERT_EQ(list.exit_code, 0);
    spit(dir / "list", list.out);
    auto ok = hf({"digest", "--check", dir / "list"});
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_EQ(ok.out, (dir / "a") + ": OK\n" + (dir / "b") + ": OK\n");
  }
  // sha256sum's own output is accepted too.
  spit(dir / "ref", run({"sha256sum", dir / "a"}).out);
  EXPECT_EQ(hf({"digest", "-c", dir / "ref"}).exit_code, 0);

  spit(dir / "b", "DEF");
  auto bad = hf({"digest", "--check", dir / "list"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.out, (dir / "a") + ": OK\n" + (dir / "b") + ": FAILED\n");
  EXPECT_NE(bad.err.find("did NOT match"), std::string::npos);

  ::unlink((dir / "a").c_str());
  auto gone = hf({"digest", "--check", dir / "list"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.out.find((dir / "a") + ": FAILED open or read"), std::string::npos);

  spit(dir / "junk", "this is not a checklist\n");
  EXPECT_EQ(hf({"digest", "--check", dir / "junk"}).exit_code, exit_code::data);
  // Tagged lines from --tag work with --check.
  spit(dir / "b", "def");
  spit(dir / "tagged", hf({"digest", "--prefixed", "-a", "sha256", dir / "b"}).out);
  EXPECT_EQ(hf({"digest", "--check", dir / "tagged"}).exit_code, 0);
  // D12: coreutils' --tag output is a valid checklist (as for sha256sum -c).
  spit(dir / "a", "abc");
  spit(dir / "bsd", run({"sha256sum", "--tag", dir / "a", dir / "b"}).out + hf({"digest", "--tag", dir / "b"}).out);
  auto bsd = hf({"digest", "--check", dir / "bsd"});
  EXPECT_EQ(bsd.exit_code, 0) << bsd.err;
  EXPECT_EQ(bsd.out, (dir / "a") + ": OK\n" + (dir / "b") + ": OK\n" + (dir / "b") + ": OK\n");
}

}  // namespace
