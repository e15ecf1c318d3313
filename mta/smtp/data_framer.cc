#include "mta/smtp/data_framer.h"

namespace mta::smtp {

DataFramer::DataFramer(Mode mode, uint64_t max_bytes, std::string* out)
    : mode_(mode), max_bytes_(max_bytes), out_(out) {}

void DataFramer::Emit(absl::string_view bytes) {
  if (bytes.empty()) return;
  uint64_t room = content_bytes_ < max_bytes_ ? max_bytes_ - content_bytes_ : 0;
  if (bytes.size() > room) {
    violations_ |= kTooBig;
    out_->append(bytes.data(), room);
  } else {
    out_->append(bytes.data(), bytes.size());
  }
  content_bytes_ += bytes.size();
}

void DataFramer::CountLine(size_t n) {
  line_len_ += n;
  // CRLF is not counted in line_len_, so the text limit is 998 octets.
  if (line_len_ > kMaxLineOctets - 2) violations_ |= kLineTooLong;
}

size_t DataFramer::Feed(absl::string_view in) {
  size_t i = 0;
  const size_t n = in.size();
  while (i < n && state_ != State::kDone) {
    switch (state_) {
      case State::kLineStart:
        line_len_ = 0;
        if (mode_ == Mode::kData && in[i] == '.') {
          state_ = State::kDot;
          ++i;
        } else {
          state_ = State::kInLine;
        }
        break;
      case State::kDot:
        if (in[i] == '\r') {
          state_ = State::kDotCr;
          ++i;
        } else {
          // A stuffed dot: drop it and treat the rest as line text.
          state_ = State::kInLine;
        }
        break;
      case State::kDotCr:
        if (in[i] == '\n') {
          state_ = State::kDone;
          ++i;
        } else {
          // ".\r" followed by something other than LF: the dot was stuffing and the CR
          // is bare.
          violations_ |= kBareCr;
          Emit("\r");
          CountLine(1);
          state_ = State::kInLine;
        }
        break;
      case State::kInLine: {
        size_t start = i;
        while (i < n) {
          char c = in[i];
          if (c == '\r' || c == '\n' || c == '\0') break;
          ++i;
        }
        Emit(in.substr(start, i - start));
        CountLine(i - start);
        if (i == n) break;
        char c = in[i];
        if (c == '\r') {
          state_ = State::kCr;
          ++i;
        } else if (c == '\n') {
          // Bare LF: flagged, kept as text, and never treated as a line start.
          violations_ |= kBareLf;
          Emit("\n");
          CountLine(1);
          ++i;
        } else {
          violations_ |= kNul;
          Emit(absl::string_view("\0", 1));
          CountLine(1);
          ++i;
        }
        break;
      }
      case State::kCr:
        if (in[i] == '\n') {
          Emit("\r\n");
          state_ = State::kLineStart;
          ++i;
        } else {
          violations_ |= kBareCr;
          Emit("\r");
          CountLine(1);
          state_ = State::kInLine;
        }
        break;
      case State::kDone:
        break;
    }
  }
  return i;
}

void DataFramer::Finish() {
  if (state_ == State::kCr || state_ == State::kDotCr) violations_ |= kBareCr;
  state_ = State::kDone;
}

}  // namespace mta::smtp
