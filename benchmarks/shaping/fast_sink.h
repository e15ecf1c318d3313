// fast_sink's types: its options, connections and the Sink (server in fast_sink.cc, SMTP
// and records in fast_sink_smtp.cc). See fast_sink.cc for what it is and why.
#ifndef BENCHMARKS_SHAPING_FAST_SINK_H_
#define BENCHMARKS_SHAPING_FAST_SINK_H_

#include <openssl/sha.h>
#include <sys/socket.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "benchmarks/shaping/fast_sink_text.h"

namespace mta_bench {

// Limits as in capture_sink.py.
inline constexpr size_t kCommandLineMax = 4096;
inline constexpr size_t kDataLineMax = size_t{1} << 20;
inline constexpr size_t kMaxRecipients = 1000;

inline constexpr int64_t kNsPerMs = 1'000'000;
// Records reach the file at most this long after they were made.
inline constexpr int64_t kRecordFlushIntervalNs = 50 * kNsPerMs;
inline constexpr size_t kRecordFlushBytes = 256 * 1024;
// Idle sessions are looked for this often.
inline constexpr int64_t kSweepIntervalNs = kNsPerSecond;
inline constexpr size_t kReadChunk = 64 * 1024;
// A client that pipelines commands without reading the replies: stop reading it until the
// replies have gone out.
inline constexpr size_t kOutputHighWater = 256 * 1024;
inline constexpr int kListenBacklog = 4096;
inline constexpr int kMaxEvents = 256;

void Log(const std::string& msg);

struct Options {
  std::vector<std::pair<std::string, std::string>> listen;  // host, port
  std::string out;
  bool no_content = false;
  std::string hostname = "capture-sink.test";
  uint64_t max_size = 50 * 1024 * 1024;
  std::optional<uint64_t> max_connections;
  double timeout_s = 300.0;
  int64_t reply_delay_ns = 0;
};

struct EventSource {
  enum class Kind { kListener, kConnection, kSignal };
  explicit EventSource(Kind k) : kind(k) {}
  Kind kind;
  int fd = -1;
};

struct Listener : EventSource {
  Listener() : EventSource(Kind::kListener) {}
};

// One SMTP session; the fields mirror capture_sink.py's Session.
struct Conn : EventSource {
  enum class Mode { kCommand, kData, kBdatChunk };

  Conn() : EventSource(Kind::kConnection) {}

  uint64_t id = 0;
  std::string peer_ip, local_ip;
  uint32_t peer_port = 0, local_port = 0;
  double start = 0;
  bool admitted = true;
  std::optional<std::string> rejected;

  bool closing = false;  // reads nothing more; closed once `out` has gone out
  bool closed = false;
  // A complete message whose final reply waits for --reply-delay (its transfer: DATA or
  // BDAT); nothing more is read or processed until it has gone out.
  std::optional<std::string_view> held;
  uint32_t interest = 0;  // epoll events registered
  int64_t last_input_ns = 0;

  std::string in;  // received, not yet consumed from in_pos on
  size_t in_pos = 0;
  bool skip_long_line = false;  // discarding a line over the limit up to its LF
  std::string out;              // replies not yet sent, from out_pos on
  size_t out_pos = 0;
  Mode mode = Mode::kCommand;

  std::optional<std::string> helo;
  bool esmtp = false;
  uint64_t msg_index = 0;

  // The transaction (capture_sink.py's reset() clears these).
  std::optional<std::string> mail_from;
  Params mail_params;
  std::vector<std::string> rcpts;
  std::vector<Params> rcpt_params;
  bool bdat_active = false;                // a BDAT transfer is in progress
  std::optional<std::string> bdat_failed;  // reply for every chunk of a doomed transfer

  // The message being received: hashed as it streams in; kept only for data_b64.
  SHA256_CTX sha;
  uint64_t content_size = 0;
  std::string content;
  bool data_prev_crlf = true;
  bool data_too_big = false;
  uint64_t chunk_remaining = 0;
  bool chunk_last = false;

  void ResetTransaction() {
    mail_from.reset();
    mail_params.clear();
    rcpts.clear();
    rcpt_params.clear();
    bdat_active = false;
    bdat_failed.reset();
  }
  size_t OutputPending() const { return out.size() - out_pos; }
};

class Sink {
 public:
  explicit Sink(Options options) : o_(std::move(options)) {}

  // Opens the record file, listens and prints the listening lines. Exits on failure.
  void Start();
  // Serves until SIGTERM/SIGINT, then writes the pending records.
  void Run();

 private:
  void Accept(Listener& l);
  void OnConnEvent(Conn& c, uint32_t events);
  // Reads what the socket has; false on a connection error. Sets *eof at end of stream.
  bool ReadInput(Conn& c, bool* eof);
  // Consumes complete commands, lines and chunks from c.in, appending replies to c.out.
  void Process(Conn& c);
  // Sends replies, then closes a closing connection or updates its epoll interest.
  void AfterIo(Conn& c);
  bool FlushOutput(Conn& c);
  void UpdateInterest(Conn& c);
  void CloseConn(Conn& c);
  void Sweep(int64_t now_mono);

  void Command(Conn& c, std::string_view line);
  void Ehlo(Conn& c, std::string_view arg);
  void Helo(Conn& c, std::string_view arg);
  void Mail(Conn& c, std::string_view arg);
  void Rcpt(Conn& c, std::string_view arg);
  void Data(Conn& c, std::string_view arg);
  void Bdat(Conn& c, std::string_view arg);
  void DataLine(Conn& c, std::string_view line);
  void EndOfChunk(Conn& c);
  void StartContent(Conn& c);
  void AddContent(Conn& c, std::string_view bytes);
  // Accepts the complete message now, or after --reply-delay.
  void CompleteMessage(Conn& c, std::string_view transfer);
  void FinishMessage(Conn& c, std::string_view transfer);
  // Accepts the held messages whose delay is over.
  void ReleaseHeld(int64_t now_mono);

  static void Reply(Conn& c, std::string_view line) {
    c.out.append(line);
    c.out.append("\r\n");
  }

  void NoteRecord(int64_t now_mono);
  void WriteConnectionRecord(const Conn& c);
  void FlushRecords();

  const Options o_;
  int epoll_fd_ = -1;
  int record_fd_ = -1;
  int reserve_fd_ = -1;  // given up to accept (and drop) a connection at EMFILE
  EventSource signal_source_{EventSource::Kind::kSignal};
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> graveyard_;  // closed during this batch of events
  uint64_t next_conn_id_ = 1;
  uint64_t concurrent_ = 0;
  bool stop_ = false;
  // (release time, connection id) of held messages; one delay for all, so in time order.
  std::deque<std::pair<int64_t, uint64_t>> held_;

  std::string records_;  // not yet written to record_fd_
  int64_t records_since_ns_ = 0;
  char scratch_[kReadChunk];
};

}  // namespace mta_bench

#endif  // BENCHMARKS_SHAPING_FAST_SINK_H_
