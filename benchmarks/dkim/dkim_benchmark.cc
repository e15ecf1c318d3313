// DKIM signing throughput: whole DkimSign calls (parse, canonicalize, hash, sign, format)
// for RSA-2048 and Ed25519 on 1 KB and 100 KB messages, next to BoringSSL's raw signing
// speed for the same keys (RSA_sign of a SHA-256 digest, ED25519_sign of 32 bytes) and the
// body canonicalization + SHA-256 alone.
//
// Hand-written: no Debian C/C++ DKIM signing library fits an io_uring shard design
// (libopendkim is milter-oriented, with its own DNS resolution and threading), so there is
// nothing to compare against in-process; the raw BoringSSL figures are the floor.
#include <openssl/curve25519.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "auth/dkim_canon.h"
#include "auth/dkim_signer.h"
#include "benchmark/benchmark.h"

namespace mta::auth {
namespace {

bssl::UniquePtr<EVP_PKEY> GenerateKey(int type) {
  bssl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_id(type, nullptr));
  EVP_PKEY* key = nullptr;
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      (type == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), 2048) != 1) ||
      EVP_PKEY_keygen(ctx.get(), &key) != 1) {
    abort();
  }
  return bssl::UniquePtr<EVP_PKEY>(key);
}

const DkimKey& Key(bool ed25519) {
  static const DkimKey* rsa =
      new DkimKey{"example.com", "rsa", DkimKey::Algorithm::kRsaSha256, GenerateKey(EVP_PKEY_RSA)};
  static const DkimKey* ed = new DkimKey{"example.com", "ed", DkimKey::Algorithm::kEd25519Sha256,
                                         GenerateKey(EVP_PKEY_ED25519)};
  return ed25519 ? *ed : *rsa;
}

// A plain-text message of about `bytes` bytes: the usual header fields (one folded), then
// lines of prose, some with runs of spaces and trailing whitespace for relaxed to fix.
std::string MakeMessage(size_t bytes) {
  std::string m =
      "Received: from client.example.com (client.example.com [192.0.2.1])\r\n"
      "\tby mx.example.com with ESMTPS id 0123456789; Fri, 04 Dec 2026 10:00:00 +0000\r\n"
      "From: Sender Name <sender@example.com>\r\n"
      "To: Recipient <rcpt@example.net>, Other <other@example.net>\r\n"
      "Subject: Quarterly report for the benchmark run\r\n"
      "Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
      "Message-ID: <20261204100000.12345@example.com>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\n"
      "Content-Transfer-Encoding: 8bit\r\n"
      "\r\n";
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog, and then  it does it again.\r\n",
      "Numbers: 0123456789 and some punctuation; all of it plain text here.  \r\n",
      "\r\n",
  };
  for (size_t i = 0; m.size() < bytes; ++i) m += lines[i % 3];
  return m;
}

DkimSignOptions Options() {
  DkimSignOptions options;
  options.now = absl::FromUnixSeconds(1796112000);
  return options;
}

// Arguments: key (0 = RSA-2048, 1 = Ed25519), message bytes.
void BM_DkimSign(benchmark::State& state) {
  const DkimKey& key = Key(state.range(0) == 1);
  const std::string message = MakeMessage(state.range(1));
  const DkimSignOptions options = Options();
  for (auto _ : state) {
    absl::StatusOr<std::string> field = DkimSign(key, options, message);
    if (!field.ok()) state.SkipWithError(std::string(field.status().message()).c_str());
    benchmark::DoNotOptimize(field);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * message.size());
  state.SetLabel(absl::StrCat(state.range(0) == 1 ? "ed25519" : "rsa-2048", " relaxed/relaxed"));
}
BENCHMARK(BM_DkimSign)
    ->ArgNames({"ed25519", "bytes"})
    ->Args({0, 1024})
    ->Args({0, 100 * 1024})
    ->Args({1, 1024})
    ->Args({1, 100 * 1024});

// Both keys at once (DkimSignAll: one parse and one body hash for the two signatures).
void BM_DkimSignDual(benchmark::State& state) {
  std::vector<DkimKey> keys;
  for (bool ed : {false, true}) {
    const DkimKey& k = Key(ed);
    keys.push_back(DkimKey{k.domain, k.selector, k.algorithm, bssl::UpRef(k.pkey)});
  }
  const std::string message = MakeMessage(state.range(0));
  const DkimSignOptions options = Options();
  for (auto _ : state) {
    absl::StatusOr<std::string> fields = DkimSignAll(keys, options, message);
    if (!fields.ok()) state.SkipWithError(std::string(fields.status().message()).c_str());
    benchmark::DoNotOptimize(fields);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * message.size());
  state.SetLabel("rsa-2048 + ed25519");
}
BENCHMARK(BM_DkimSignDual)->ArgName("bytes")->Arg(1024)->Arg(100 * 1024);

// Body canonicalization and SHA-256 only (the bh= work). Arguments: relaxed (0/1), bytes.
void BM_DkimBodyHash(benchmark::State& state) {
  const DkimCanonicalization mode =
      state.range(0) == 1 ? DkimCanonicalization::kRelaxed : DkimCanonicalization::kSimple;
  const std::string body = MakeMessage(state.range(1));
  std::string canonical;
  canonical.reserve(body.size() + 2);
  for (auto _ : state) {
    canonical.clear();
    DkimBodyCanonicalizer canonicalizer(mode);
    canonicalizer.Update(body, &canonical);
    canonicalizer.Finish(&canonical);
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const uint8_t*>(canonical.data()), canonical.size(), digest);
    benchmark::DoNotOptimize(digest);
  }
  state.SetBytesProcessed(state.iterations() * body.size());
  state.SetLabel(std::string(DkimCanonicalizationName(mode)));
}
BENCHMARK(BM_DkimBodyHash)
    ->ArgNames({"relaxed", "bytes"})
    ->Args({0, 100 * 1024})
    ->Args({1, 100 * 1024});

// BoringSSL alone, same RSA key: RSASSA-PKCS1-v1_5 over a SHA-256 digest.
void BM_RawRsaSign(benchmark::State& state) {
  RSA* rsa = EVP_PKEY_get0_RSA(Key(false).pkey.get());
  uint8_t digest[SHA256_DIGEST_LENGTH] = {1, 2, 3};
  std::vector<uint8_t> signature(RSA_size(rsa));
  for (auto _ : state) {
    unsigned len = 0;
    if (RSA_sign(NID_sha256, digest, sizeof(digest), signature.data(), &len, rsa) != 1) {
      state.SkipWithError("RSA_sign failed");
    }
    benchmark::DoNotOptimize(signature.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("rsa-2048");
}
BENCHMARK(BM_RawRsaSign);

// BoringSSL alone, same Ed25519 key: ED25519_sign of 32 bytes (what ed25519-sha256 signs).
void BM_RawEd25519Sign(benchmark::State& state) {
  uint8_t seed[32];  // the RFC 8032 private key (seed)
  size_t seed_len = sizeof(seed);
  if (!EVP_PKEY_get_raw_private_key(Key(true).pkey.get(), seed, &seed_len)) abort();
  uint8_t public_key[ED25519_PUBLIC_KEY_LEN];
  uint8_t private_key[ED25519_PRIVATE_KEY_LEN];
  ED25519_keypair_from_seed(public_key, private_key, seed);
  uint8_t digest[SHA256_DIGEST_LENGTH] = {1, 2, 3};
  uint8_t signature[ED25519_SIGNATURE_LEN];
  for (auto _ : state) {
    if (ED25519_sign(signature, digest, sizeof(digest), private_key) != 1) {
      state.SkipWithError("ED25519_sign failed");
    }
    benchmark::DoNotOptimize(signature);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("ed25519");
}
BENCHMARK(BM_RawEd25519Sign);

}  // namespace
}  // namespace mta::auth
