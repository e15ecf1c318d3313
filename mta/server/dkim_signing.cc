#include "mta/server/dkim_signing.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "queue/retry_schedule.h"

namespace mta::server {
namespace {

// The unfolded value of the first `name` field in the header block of `content`, or
// nullopt.
std::optional<std::string> HeaderValue(absl::string_view content, absl::string_view name) {
  size_t pos = 0;
  while (pos < content.size()) {
    size_t eol = content.find('\n', pos);
    if (eol == absl::string_view::npos) eol = content.size();
    absl::string_view line = content.substr(pos, eol - pos);
    if (absl::StripTrailingAsciiWhitespace(line).empty()) return std::nullopt;  // end of header
    size_t colon = line.find(':');
    if (colon != absl::string_view::npos && line[0] != ' ' && line[0] != '\t' &&
        absl::EqualsIgnoreCase(absl::StripTrailingAsciiWhitespace(line.substr(0, colon)), name)) {
      std::string value(line.substr(colon + 1));
      pos = eol + 1;
      while (pos < content.size() && (content[pos] == ' ' || content[pos] == '\t')) {
        size_t next = content.find('\n', pos);
        if (next == absl::string_view::npos) next = content.size();
        absl::StrAppend(&value, content.substr(pos, next - pos));
        pos = next + 1;
      }
      return value;
    }
    pos = eol + 1;
  }
  return std::nullopt;
}

// Removes RFC 5322 comments "(...)" (nested) and the contents of quoted strings (a display
// name or quoted local part may hold '<', '@' or ','), keeping the quotes.
std::string StripCommentsAndQuotes(absl::string_view in) {
  std::string out;
  int depth = 0;
  bool quoted = false;
  for (size_t i = 0; i < in.size(); ++i) {
    char ch = in[i];
    if (quoted) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '"') {
        quoted = false;
        out.push_back(ch);
      }
    } else if (depth > 0) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '(') {
        ++depth;
      } else if (ch == ')') {
        --depth;
      }
    } else if (ch == '(') {
      depth = 1;
    } else {
      if (ch == '"') quoted = true;
      out.push_back(ch);
    }
  }
  return out;
}

// The lower-cased domain of an addr-spec, or "" when it has none.
std::string DomainOf(absl::string_view address) {
  address = absl::StripAsciiWhitespace(address);
  size_t at = address.rfind('@');
  if (at == absl::string_view::npos) return "";
  absl::string_view domain = absl::StripAsciiWhitespace(address.substr(at + 1));
  if (domain.empty()) return "";
  for (char ch : domain) {
    if (!absl::ascii_isalnum(ch) && ch != '.' && ch != '-' && ch != '_' &&
        static_cast<unsigned char>(ch) < 0x80) {
      return "";
    }
  }
  return absl::AsciiStrToLower(domain);
}

std::string FromDomain(absl::string_view content) {
  std::optional<std::string> from = HeaderValue(content, "From");
  if (!from.has_value()) return "";
  std::string value = StripCommentsAndQuotes(*from);
  size_t lt = value.find('<');
  if (lt != std::string::npos) {
    size_t gt = value.find('>', lt);
    if (gt == std::string::npos) return "";
    return DomainOf(absl::string_view(value).substr(lt + 1, gt - lt - 1));
  }
  // A bare addr-spec list: the first one.
  absl::string_view first = value;
  size_t comma = first.find(',');
  if (comma != absl::string_view::npos) first = first.substr(0, comma);
  return DomainOf(first);
}

}  // namespace

const DkimDomainKeys* DkimKeySet::Find(absl::string_view domain) const {
  auto it = domains_.find(domain);
  return it == domains_.end() ? nullptr : &it->second;
}

size_t DkimKeySet::key_count() const {
  size_t n = 0;
  for (const auto& [domain, keys] : domains_) n += keys.size();
  return n;
}

absl::StatusOr<std::shared_ptr<const DkimKeySet>> LoadDkimKeys(const Config& config) {
  auto set = std::make_shared<DkimKeySet>();
  for (size_t i = 0; i < config.dkim_signing.size(); ++i) {
    const DkimSigningConfig& c = config.dkim_signing[i];
    std::string where =
        absl::StrCat("dkim.signing[", i, "] (", c.selector, "._domainkey.", c.domain, ")");
    absl::StatusOr<auth::DkimKey> key = auth::LoadDkimKey(c.domain, c.selector, c.key_file);
    if (!key.ok()) {
      std::string why(key.status().message());
      if (!absl::StrContains(why, c.key_file)) why = absl::StrCat(c.key_file, ": ", why);
      return absl::Status(key.status().code(), absl::StrCat(where, ": ", why));
    }
    DkimSigningKey k{.key = *std::move(key)};
    if (!c.headers.empty()) k.options.signed_headers = c.headers;
    if (!c.oversign.empty()) k.options.oversigned_headers = c.oversign;
    auto canon = [](absl::string_view s) {
      return s == "simple" ? auth::DkimCanonicalization::kSimple
                           : auth::DkimCanonicalization::kRelaxed;
    };
    size_t slash = c.canonicalization.find('/');
    absl::string_view cz = c.canonicalization;
    k.options.header_canonicalization = canon(cz.substr(0, slash));
    k.options.body_canonicalization =
        canon(slash == absl::string_view::npos ? cz : cz.substr(slash + 1));
    if (!c.expire.empty()) {
      auto d = queue::RetryPolicy::ParseIntervals(c.expire);
      if (!d.ok() || d->size() != 1 || (*d)[0] <= absl::ZeroDuration()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": bad expire \"", c.expire, "\""));
      }
      k.options.expiry = (*d)[0];
    }
    set->domains_[c.domain].push_back(std::move(k));
  }
  return std::shared_ptr<const DkimKeySet>(std::move(set));
}

std::string DkimSigningDomain(absl::string_view content, absl::string_view envelope_sender) {
  std::string domain = FromDomain(content);
  if (domain.empty()) domain = DomainOf(envelope_sender);
  return domain;
}

absl::Status DkimSignRecord(const DkimDomainKeys& keys, queue::SpoolRecord* record) {
  std::string fields;
  const absl::Time now = absl::Now();
  for (const DkimSigningKey& k : keys) {
    auth::DkimSignOptions options = k.options;
    options.now = now;
    absl::StatusOr<std::string> field = auth::DkimSign(k.key, options, record->content);
    if (!field.ok()) return field.status();
    fields += *field;
  }
  // At the very top, above our Received: (see the header comment).
  record->content.insert(0, fields);
  record->envelope.content_bytes = record->content.size();
  return absl::OkStatus();
}

DkimSigningService::DkimSigningService(std::shared_ptr<const DkimKeySet> keys, size_t max_pending,
                                       size_t threads)
    : keys_(std::move(keys)) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (size_t i = 0; i < threads; ++i) {
    queues_.push_back(
        std::make_unique<WorkQueue>(absl::StrCat("dkim-signer-", i), max_pending / threads));
  }
}

DkimSigningService::~DkimSigningService() = default;

std::shared_ptr<const DkimKeySet> DkimSigningService::keys() const {
  absl::MutexLock lock(&mu_);
  return keys_;
}

void DkimSigningService::SetKeys(std::shared_ptr<const DkimKeySet> keys) {
  absl::MutexLock lock(&mu_);
  keys_ = std::move(keys);
}

void DkimSigningService::Sign(std::unique_ptr<queue::SpoolRecord> record,
                              std::shared_ptr<const DkimKeySet> keys, std::string domain,
                              Callback done) {
  WorkQueue& queue = *queues_[next_.fetch_add(1, std::memory_order_relaxed) % queues_.size()];
  if (!queue.HasRoom()) {
    done(absl::ResourceExhaustedError("too many messages waiting to be signed"), std::move(record));
    return;
  }
  queue.Post([record = std::move(record), keys = std::move(keys), domain = std::move(domain),
              done = std::move(done)]() mutable {
    const DkimDomainKeys* found = keys == nullptr ? nullptr : keys->Find(domain);
    absl::Status status = found == nullptr ? absl::InternalError("no DKIM keys for the domain")
                                           : DkimSignRecord(*found, record.get());
    done(std::move(status), std::move(record));
  });
}

}  // namespace mta::server
