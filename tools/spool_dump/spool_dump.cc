// spool_dump: prints every message in a stopped mtad's spool as one JSON object per line
// ({"id", "sender", "recipients", "stream", "auth_user", "content_base64", ...}). Used by the
// crash tests and by operators inspecting a spool offline; it takes the spool's lock, so mtad
// must not be running on the same directory.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/escaping.h"
#include "nlohmann/json.hpp"
#include "queue/rocksdb_spool.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: spool_dump SPOOL_DIR\n");
    return 2;
  }
  mta::queue::RocksDbSpoolOptions options;
  options.path = argv[1];
  options.min_free_bytes = 0;
  auto spool = mta::queue::OpenRocksDbSpool(options);
  if (!spool.ok()) {
    std::fprintf(stderr, "spool_dump: %s\n", std::string(spool.status().message()).c_str());
    return 1;
  }
  int errors = 0;
  absl::Status s = (*spool)->Recover([&](mta::queue::Envelope e) {
    nlohmann::json j;
    j["id"] = e.id;
    j["sender"] = e.sender;
    j["stream"] = e.stream;
    j["listener"] = e.listener;
    j["client_ip"] = e.client_ip;
    j["auth_user"] = e.auth_user;
    j["received_ms"] = e.received_ms;
    j["ret"] = static_cast<int>(e.ret);
    j["envid"] = e.envid;
    j["body_type"] = static_cast<int>(e.body_type);
    j["smtputf8"] = e.smtputf8;
    nlohmann::json rcpts = nlohmann::json::array();
    for (const auto& r : e.recipients) {
      rcpts.push_back({{"address", r.address},
                       {"notify", r.notify},
                       {"orcpt", r.orcpt},
                       {"state", static_cast<int>(r.state)}});
    }
    j["recipients"] = rcpts;
    auto content = (*spool)->ReadContent(e.id);
    if (!content.ok()) {
      std::fprintf(stderr, "spool_dump: %s: %s\n", e.id.c_str(),
                   std::string(content.status().message()).c_str());
      ++errors;
      return;
    }
    j["content_base64"] = absl::Base64Escape(*content);
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  });
  (*spool)->Shutdown();
  if (!s.ok()) {
    std::fprintf(stderr, "spool_dump: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return errors == 0 ? 0 : 1;
}
