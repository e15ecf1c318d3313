#include "tools/mtactl/admin_commands.h"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tools/mtactl/admin_client.h"

namespace mta::tools {

const char kAdminUsage[] =
    "       mtactl queue                          waiting recipients per destination and stream\n"
    "       mtactl messages [--domain D] [--stream S] [--limit N]\n"
    "       mtactl show ID                        one message's waiting recipients\n"
    "       mtactl suspend destination|source|stream NAME\n"
    "       mtactl resume destination|source|stream NAME\n"
    "       mtactl suspended                      what is suspended now\n"
    "       mtactl retry --id ID | --domain D | --stream S\n"
    "       mtactl bounce (--id ID | --domain D) [--stream S] --reason TEXT\n"
    "       mtactl reload                         re-read the configuration (like SIGHUP)\n"
    "Admin commands talk to mtad's HTTP API: --url URL (default $MTACTL_URL or\n"
    "http://127.0.0.1:8025) and --token-file FILE (default $MTACTL_TOKEN_FILE) for a\n"
    "non-loopback API.\n";

namespace {

using Query = std::vector<std::pair<std::string, std::string>>;

const std::set<std::string> kCommands = {"queue",     "messages", "show",   "suspend", "resume",
                                         "suspended", "retry",    "bounce", "reload"};

int Fail(const std::string& message, int code = 1) {
  std::cerr << "mtactl: " << message << "\n";
  return code;
}

// Prints the queue summary as a table, largest destinations first (as the API sorts it).
void PrintQueue(const nlohmann::json& j) {
  std::cout << absl::StrFormat("%-40s %-16s %9s %9s %9s %12s\n", "DESTINATION", "STREAM", "READY",
                               "SCHEDULED", "SUSPENDED", "OLDEST (s)");
  for (const auto& d : j.value("destinations", nlohmann::json::array())) {
    std::cout << absl::StrFormat("%-40s %-16s %9d %9d %9d %12.0f\n", d.value("destination", ""),
                                 d.value("stream", ""), d.value("ready", 0),
                                 d.value("scheduled", 0), d.value("suspended", 0),
                                 d.value("oldest_age_s", 0.0));
  }
  std::cout << absl::StrFormat("%-57s %9d %9d %9d\n", "TOTAL", j.value("ready", 0),
                               j.value("scheduled", 0), j.value("suspended", 0));
}

}  // namespace

bool IsAdminCommand(const std::string& command) { return kCommands.contains(command); }

int RunAdminCommand(std::vector<std::string> args) {
  const char* env_url = std::getenv("MTACTL_URL");
  const char* env_token = std::getenv("MTACTL_TOKEN_FILE");
  std::string url = env_url != nullptr ? env_url : "http://127.0.0.1:8025";
  std::string token_file = env_token != nullptr ? env_token : "";
  // Options: --url and --token-file anywhere, the rest by command.
  std::vector<std::string> words;
  Query query;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      words.push_back(a);
      continue;
    }
    if (i + 1 >= args.size()) return Fail(a + " needs a value", 2);
    std::string value = args[++i];
    if (a == "--url") {
      url = value;
    } else if (a == "--token-file") {
      token_file = value;
    } else if (a == "--id" || a == "--domain" || a == "--stream" || a == "--limit" ||
               a == "--reason") {
      query.push_back({a.substr(2), value});
    } else {
      return Fail("unknown option " + a, 2);
    }
  }
  std::string token;
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in || !std::getline(in, token)) return Fail("cannot read " + token_file, 2);
    token = std::string(absl::StripAsciiWhitespace(token));
  }
  const std::string& command = words[0];
  std::string method = "GET", path;
  auto no_more_words = [&](size_t n) { return words.size() == n; };
  if (command == "queue" && no_more_words(1)) {
    path = "/api/v1/queue";
  } else if (command == "messages" && no_more_words(1)) {
    path = "/api/v1/messages";
  } else if (command == "show" && no_more_words(2)) {
    path = "/api/v1/messages/" + PercentEncode(words[1]);
  } else if (command == "suspended" && no_more_words(1)) {
    path = "/api/v1/suspended";
  } else if ((command == "suspend" || command == "resume") && no_more_words(3) &&
             (words[1] == "destination" || words[1] == "source" || words[1] == "stream")) {
    method = "POST";
    path = "/api/v1/" + command;
    query.push_back({words[1], words[2]});
  } else if ((command == "retry" || command == "bounce" || command == "reload") &&
             no_more_words(1)) {
    method = "POST";
    path = "/api/v1/" + command;
  } else {
    return Fail("usage:\n" + std::string(kAdminUsage), 2);
  }
  auto response = AdminRequest(url, method, path, query, token);
  if (!response.ok()) return Fail(std::string(response.status().message()));
  nlohmann::json j = nlohmann::json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return Fail("mtad answered " + std::to_string(response->status) + ": " + response->body);
  if (response->status >= 300) {
    return Fail(absl::StrFormat("%d: %s", response->status, j.value("error", response->body)));
  }
  if (command == "queue") {
    PrintQueue(j);
  } else {
    std::cout << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace mta::tools
