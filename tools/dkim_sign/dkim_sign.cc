// dkim_sign: signs the RFC 5322 message on stdin with one or more DKIM keys and writes the
// signed message (the DKIM-Signature fields, then the message unchanged) to stdout; or, with
// --record, prints the DNS TXT records that publish the keys.
//
// Hand-written over //auth:dkim_signer: no Debian C/C++ DKIM signing library fits an io_uring
// shard design (libopendkim is milter-oriented, with its own DNS resolution and threading),
// and this tool exists to exercise our signer against independent verifiers.
//
// usage: dkim_sign --domain=example.com --key=SELECTOR:KEY.pem [--key=...]
//                  [--canonicalization=relaxed/relaxed] [--time=UNIX] [--expiry=SECONDS]
//                  [--headers=from,to,...] [--oversign=from,subject,to] [--record]
#include <stdio.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "auth/dkim_signer.h"

namespace {

using mta::auth::DkimCanonicalization;

constexpr char kUsage[] =
    "usage: dkim_sign --domain=DOMAIN --key=SELECTOR:KEY.pem [--key=...]\n"
    "                 [--canonicalization=HEADER/BODY] [--time=UNIX_SECONDS]\n"
    "                 [--expiry=SECONDS] [--headers=NAME,...] [--oversign=NAME,...]\n"
    "                 [--record]\n"
    "Signs the message on stdin (CRLF line endings) and writes it, signed, to stdout.\n"
    "--record prints the DNS TXT record of each key instead (stdin is not read).\n"
    "HEADER and BODY are simple or relaxed (default relaxed/relaxed).\n";

int Usage(absl::string_view error) {
  fprintf(stderr, "dkim_sign: %.*s\n%s", static_cast<int>(error.size()), error.data(), kUsage);
  return 2;
}

bool ParseCanonicalization(absl::string_view text, DkimCanonicalization* out) {
  if (text == "simple") {
    *out = DkimCanonicalization::kSimple;
  } else if (text == "relaxed") {
    *out = DkimCanonicalization::kRelaxed;
  } else {
    return false;
  }
  return true;
}

std::vector<std::string> NameList(absl::string_view text) {
  return absl::StrSplit(text, ',', absl::SkipWhitespace());
}

bool WriteAll(absl::string_view data) {
  return fwrite(data.data(), 1, data.size(), stdout) == data.size() && fflush(stdout) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string domain;
  std::vector<std::pair<std::string, std::string>> keys;  // selector, path
  mta::auth::DkimSignOptions options;
  bool record = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    const size_t eq = arg.find('=');
    const absl::string_view flag = arg.substr(0, eq);
    const absl::string_view value = eq == absl::string_view::npos ? "" : arg.substr(eq + 1);
    if (flag == "--domain") {
      domain = std::string(value);
    } else if (flag == "--key") {
      const size_t colon = value.find(':');
      if (colon == absl::string_view::npos) return Usage("--key needs SELECTOR:PATH");
      keys.emplace_back(std::string(value.substr(0, colon)), std::string(value.substr(colon + 1)));
    } else if (flag == "--canonicalization") {
      const std::vector<absl::string_view> parts = absl::StrSplit(value, '/');
      // RFC 6376 3.5: "c=simple" alone means simple header, simple body.
      if (parts.size() > 2 || !ParseCanonicalization(parts[0], &options.header_canonicalization) ||
          !ParseCanonicalization(parts.size() == 2 ? parts[1] : "simple",
                                 &options.body_canonicalization)) {
        return Usage("bad --canonicalization");
      }
    } else if (flag == "--time") {
      int64_t t;
      if (!absl::SimpleAtoi(value, &t)) return Usage("bad --time");
      options.now = absl::FromUnixSeconds(t);
    } else if (flag == "--expiry") {
      int64_t seconds;
      if (!absl::SimpleAtoi(value, &seconds)) return Usage("bad --expiry");
      options.expiry = absl::Seconds(seconds);
    } else if (flag == "--headers") {
      options.signed_headers = NameList(value);
    } else if (flag == "--oversign") {
      options.oversigned_headers = NameList(value);
    } else if (flag == "--record" && eq == absl::string_view::npos) {
      record = true;
    } else {
      return Usage(std::string("unknown argument ") + argv[i]);
    }
  }
  if (domain.empty()) return Usage("--domain is required");
  if (keys.empty()) return Usage("at least one --key is required");

  std::vector<mta::auth::DkimKey> loaded;
  for (const auto& [selector, path] : keys) {
    absl::StatusOr<mta::auth::DkimKey> key = mta::auth::LoadDkimKey(domain, selector, path);
    if (!key.ok()) {
      fprintf(stderr, "dkim_sign: %s\n", key.status().ToString().c_str());
      return 1;
    }
    loaded.push_back(std::move(key).value());
  }

  if (record) {
    for (const mta::auth::DkimKey& key : loaded) {
      absl::StatusOr<std::string> line = mta::auth::DkimZoneLine(key);
      if (!line.ok()) {
        fprintf(stderr, "dkim_sign: %s\n", line.status().ToString().c_str());
        return 1;
      }
      if (!WriteAll(*line + "\n")) return 1;
    }
    return 0;
  }

  std::string message;
  char buf[65536];
  ssize_t n;
  while ((n = read(STDIN_FILENO, buf, sizeof(buf))) > 0) message.append(buf, n);
  if (n < 0) {
    perror("dkim_sign: reading stdin");
    return 1;
  }
  absl::StatusOr<std::string> fields = mta::auth::DkimSignAll(loaded, options, message);
  if (!fields.ok()) {
    fprintf(stderr, "dkim_sign: %s\n", fields.status().ToString().c_str());
    return 1;
  }
  if (!WriteAll(*fields) || !WriteAll(message)) {
    perror("dkim_sign: writing stdout");
    return 1;
  }
  return 0;
}
