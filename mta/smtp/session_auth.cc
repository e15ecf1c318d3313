// Session's SMTP AUTH half (RFC 4954: PLAIN per RFC 4616, and LOGIN): the exchange, and the
// verdict of the delegate's credential check. The rest of the protocol is in session.cc.
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "mta/smtp/session.h"

namespace mta::smtp {
namespace {

bool DecodeBase64Strict(absl::string_view in, std::string* out) {
  if (in.size() % 4 != 0) return false;
  size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  for (size_t i = 0; i + pad < in.size(); ++i) {
    char c = in[i];
    if (!absl::ascii_isalnum(c) && c != '+' && c != '/') return false;
  }
  return absl::Base64Unescape(in, out);
}

}  // namespace

bool Session::AuthOffered() const {
  return config_.auth_enabled && (client_.tls || config_.auth_trusted);
}

void Session::HandleAuth(absl::string_view args) {
  if (!config_.auth_enabled) return ReplyError("502 5.5.1 Error: command not implemented");
  if (!esmtp_) return ReplyError("503 5.5.1 Error: send EHLO first");
  if (auth_user_.has_value()) return ReplyError("503 5.5.1 Error: already authenticated");
  if (txn_.envelope.has_value() || txn_.bdat) {
    return ReplyError("503 5.5.1 Error: AUTH not permitted during a mail transaction");
  }
  if (!AuthOffered()) {
    return ReplyError("538 5.7.11 Encryption required for requested authentication mechanism");
  }
  size_t space = args.find(' ');
  absl::string_view mechanism = args.substr(0, space);
  const bool has_initial = space != absl::string_view::npos;
  absl::string_view initial = has_initial ? args.substr(space + 1) : absl::string_view();
  if (mechanism.empty() || initial.find(' ') != absl::string_view::npos) {
    return ReplyError("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
  }
  const bool plain = absl::EqualsIgnoreCase(mechanism, "PLAIN");
  if (!plain && !absl::EqualsIgnoreCase(mechanism, "LOGIN")) {
    return ReplyError("504 5.5.4 Unrecognized authentication type");
  }
  std::string decoded;
  // RFC 4954 section 4: "=" is an empty initial response.
  if (has_initial && initial != "=" && !DecodeBase64Strict(initial, &decoded)) {
    return ReplyError("501 5.5.2 Error: invalid base64 data");
  }
  if (plain) {
    if (has_initial) return FinishPlain(decoded);
    auth_step_ = AuthStep::kPlain;
    return Reply("334 ");
  }
  // LOGIN (draft-murchison-sasl-login): the user name, then the password, each in base64;
  // an initial response is the user name.
  if (!has_initial) {
    auth_step_ = AuthStep::kLoginUser;
    return Reply("334 VXNlcm5hbWU6");  // "Username:"
  }
  auth_login_user_ = std::move(decoded);
  auth_step_ = AuthStep::kLoginPassword;
  Reply("334 UGFzc3dvcmQ6");  // "Password:"
}

void Session::HandleAuthResponse(absl::string_view line) {
  const AuthStep step = auth_step_;
  auth_step_ = AuthStep::kNone;
  if (line == "*") return ReplyError("501 5.0.0 Authentication cancelled");
  std::string decoded;
  if (!DecodeBase64Strict(line, &decoded)) {
    return ReplyError("501 5.5.2 Error: invalid base64 data");
  }
  switch (step) {
    case AuthStep::kNone:
    case AuthStep::kPlain:
      return FinishPlain(decoded);
    case AuthStep::kLoginUser:
      auth_login_user_ = std::move(decoded);
      auth_step_ = AuthStep::kLoginPassword;
      return Reply("334 UGFzc3dvcmQ6");  // "Password:"
    case AuthStep::kLoginPassword: {
      std::string user = std::move(auth_login_user_);
      auth_login_user_.clear();
      return StartVerification(std::move(user), std::move(decoded));
    }
  }
}

// RFC 4616: [authzid] NUL authcid NUL passwd.
void Session::FinishPlain(absl::string_view decoded) {
  size_t first = decoded.find('\0');
  size_t second = first == absl::string_view::npos ? first : decoded.find('\0', first + 1);
  if (second == absl::string_view::npos ||
      decoded.find('\0', second + 1) != absl::string_view::npos || second == first + 1 ||
      second + 1 == decoded.size()) {
    return ReplyError("501 5.5.2 Error: malformed PLAIN response");
  }
  absl::string_view authzid = decoded.substr(0, first);
  absl::string_view authcid = decoded.substr(first + 1, second - first - 1);
  // Acting as another identity (proxy authorization) is not supported.
  if (!authzid.empty() && authzid != authcid) {
    return ReplyError("535 5.7.8 Authentication credentials invalid");
  }
  StartVerification(std::string(authcid), std::string(decoded.substr(second + 1)));
}

void Session::StartVerification(std::string user, std::string password) {
  // Nothing more is read until the verdict: commands pipelined behind AUTH must not run
  // before the client's identity (and so its right to relay) is known.
  phase_ = Phase::kWaitingAuth;
  delegate_->VerifyCredentials(std::move(user), std::move(password));
}

void Session::OnCredentialsVerified(absl::StatusOr<auth::AuthUser> result) {
  if (phase_ != Phase::kWaitingAuth) return;
  phase_ = Phase::kCommand;
  if (result.ok()) {
    auth_user_ = *std::move(result);
    Reply("235 2.7.0 Authentication successful");
  } else if (result.status().code() == absl::StatusCode::kPermissionDenied) {
    ReplyError("535 5.7.8 Authentication credentials invalid");
  } else {
    ReplyError("454 4.7.0 Temporary authentication failure");
  }
  Process();
}

}  // namespace mta::smtp
