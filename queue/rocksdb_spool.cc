#include "queue/rocksdb_spool.h"

#include <sys/statvfs.h>

#include <atomic>
#include <deque>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mta/base/log.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace mta::queue {
namespace {

constexpr char kEnvelopesCf[] = "envelopes";
constexpr char kMessagesCf[] = "messages";
constexpr char kOutcomesCf[] = "outcomes";

// Outcome keys are "<id>.<index as 8 hex digits>", so one message's outcomes are the
// contiguous range ["<id>.", "<id>/") and sort right after nothing else.
std::string OutcomeKey(const std::string& id, uint32_t index) {
  return absl::StrFormat("%s.%08x", id, index);
}

std::string EncodeOutcome(const RecipientUpdate& u) {
  return absl::StrFormat("%d %d %d", static_cast<int>(u.state), u.attempts, u.next_attempt_ms);
}

bool DecodeOutcome(absl::string_view key, absl::string_view value, RecipientUpdate* u) {
  uint32_t index = 0;
  int state = 0;
  if (key.size() < 9 || !absl::SimpleHexAtoi(key.substr(key.size() - 8), &index)) return false;
  std::vector<absl::string_view> parts = absl::StrSplit(value, ' ');
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &state) || state < 0 || state > 3 ||
      !absl::SimpleAtoi(parts[1], &u->attempts) ||
      !absl::SimpleAtoi(parts[2], &u->next_attempt_ms)) {
    return false;
  }
  u->index = index;
  u->state = static_cast<RecipientState>(state);
  return true;
}
constexpr char kHealthProbeKey[] = "\x01health-probe";

// rocksdb::Status never leaves queue/: converted once, here.
absl::Status RocksToStatus(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat("spool ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::UnavailableError(msg);
}

class RocksDbSpool final : public Spool {
 public:
  RocksDbSpool(const RocksDbSpoolOptions& options, rocksdb::DB* db,
               std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : options_(options), db_(db), handles_(std::move(handles)) {
    envelopes_ = handles_[1];
    messages_ = handles_[2];
    outcomes_ = handles_[3];
    CheckDisk();
    writer_ = std::thread([this] { WriterLoop(); });
  }

  ~RocksDbSpool() override { Shutdown(); }

  void Commit(std::unique_ptr<SpoolRecord> record, CommitCallback done) override {
    SpoolRecord* r = record.get();
    Enqueue({[this, r](rocksdb::WriteBatch* wb) {
               wb->Put(messages_, r->envelope.id, r->content);
               wb->Put(envelopes_, r->envelope.id, EncodeEnvelope(r->envelope));
             },
             [record = std::move(record), done = std::move(done)](absl::Status s) mutable {
               done(std::move(s), std::move(record));
             },
             /*sync=*/true, /*is_commit=*/true});
  }

  void RecordOutcomes(const std::string& id, std::vector<RecipientUpdate> updates,
                      WriteCallback done) override {
    Enqueue({[this, id, updates = std::move(updates)](rocksdb::WriteBatch* wb) {
               for (const RecipientUpdate& u : updates) {
                 wb->Put(outcomes_, OutcomeKey(id, u.index), EncodeOutcome(u));
               }
             },
             std::move(done), /*sync=*/true, /*is_commit=*/false});
  }

  void Remove(const std::string& id, WriteCallback done) override {
    Enqueue({[this, id](rocksdb::WriteBatch* wb) {
               wb->Delete(envelopes_, id);
               wb->Delete(messages_, id);
               wb->DeleteRange(outcomes_, id + ".", id + "/");
             },
             std::move(done), /*sync=*/false, /*is_commit=*/false});
  }

  absl::Status Recover(const std::function<void(Envelope)>& fn) override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), envelopes_));
    std::unique_ptr<rocksdb::Iterator> out(db_->NewIterator(rocksdb::ReadOptions(), outcomes_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto envelope = DecodeEnvelope(absl::string_view(it->value().data(), it->value().size()));
      if (!envelope.ok()) {
        // A corrupt record is reported and skipped rather than blocking every other one.
        MTA_LOG_ERROR("spool: skipping %s: %s", it->key().ToString(), envelope.status().ToString());
        continue;
      }
      std::string prefix = envelope->id + ".";
      for (out->Seek(prefix); out->Valid() && out->key().starts_with(prefix); out->Next()) {
        RecipientUpdate u;
        absl::string_view key(out->key().data(), out->key().size());
        absl::string_view value(out->value().data(), out->value().size());
        if (!DecodeOutcome(key, value, &u) || u.index >= envelope->recipients.size()) {
          MTA_LOG_ERROR("spool: ignoring corrupt outcome %s", std::string(key));
          continue;
        }
        Recipient& r = envelope->recipients[u.index];
        r.state = u.state;
        r.attempts = u.attempts;
      }
      fn(*std::move(envelope));
    }
    if (!out->status().ok()) return RocksToStatus(out->status(), "recover outcomes");
    return RocksToStatus(it->status(), "recover");
  }

  absl::StatusOr<std::string> ReadContent(const std::string& id) override {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), messages_, id, &value);
    if (!s.ok()) return RocksToStatus(s, absl::StrCat("read ", id));
    return value;
  }

  bool Healthy() const override { return write_failed_.load() == false && disk_ok_.load(); }

  std::string HealthReason() const override {
    absl::MutexLock lock(&reason_mu_);
    return reason_;
  }

  SpoolStats Stats() const override {
    SpoolStats s;
    s.commits = commits_.load();
    s.batches = batches_.load();
    s.commit_errors = commit_errors_.load();
    // RocksDB's properties are thread-safe: this may run on the metrics thread.
    for (rocksdb::ColumnFamilyHandle* cf : handles_) {
      uint64_t v = 0;
      if (db_->GetIntProperty(cf, rocksdb::DB::Properties::kEstimateLiveDataSize, &v)) s.bytes += v;
      if (db_->GetIntProperty(cf, rocksdb::DB::Properties::kCurSizeAllMemTables, &v)) s.bytes += v;
    }
    return s;
  }

  void Shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_ && !writer_.joinable()) return;
      stopping_ = true;
    }
    if (writer_.joinable()) writer_.join();
    if (db_ != nullptr) {
      rocksdb::Status s = db_->FlushWAL(/*sync=*/true);
      if (!s.ok()) MTA_LOG_WARNING("spool: final WAL sync: %s", s.ToString());
      for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
      handles_.clear();
      s = db_->Close();
      if (!s.ok()) MTA_LOG_WARNING("spool: close: %s", s.ToString());
      delete db_;
      db_ = nullptr;
    }
  }

 private:
  // One queued write: `fill` adds its changes to the shared batch, `done` gets the result.
  struct Pending {
    absl::AnyInvocable<void(rocksdb::WriteBatch*)> fill;
    WriteCallback done;
    bool sync;
    bool is_commit;
  };

  void Enqueue(Pending p) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        pending_.push_back(std::move(p));
        return;
      }
    }
    p.done(absl::UnavailableError("spool is shutting down"));
  }

  void SetReason(std::string reason) {
    absl::MutexLock lock(&reason_mu_);
    reason_ = std::move(reason);
  }

  void CheckDisk() {
    struct statvfs st;
    if (statvfs(options_.path.c_str(), &st) != 0) return;
    uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    bool ok = free_bytes >= options_.min_free_bytes;
    if (ok != disk_ok_.load()) {
      if (ok) {
        MTA_LOG_INFO("spool: free disk %d MiB, accepting again", free_bytes >> 20);
        if (!write_failed_.load()) SetReason("");
      } else {
        MTA_LOG_ERROR("spool: free disk %d MiB below floor %d MiB, shedding intake",
                      free_bytes >> 20, options_.min_free_bytes >> 20);
        SetReason(absl::StrCat("free disk space below ", options_.min_free_bytes >> 20, " MiB"));
      }
      disk_ok_.store(ok);
    }
  }

  // After a failed write RocksDB stops accepting writes; try to resume and prove with a
  // synced write that the spool keeps data again.
  void ProbeAfterFailure() {
    rocksdb::Status s = db_->Resume();
    rocksdb::WriteOptions wo;
    wo.sync = true;
    if (s.ok()) s = db_->Put(wo, kHealthProbeKey, "ok");
    if (s.ok()) {
      MTA_LOG_INFO("spool: writes succeed again, accepting");
      write_failed_.store(false);
      if (disk_ok_.load()) SetReason("");
    }
  }

  void WriterLoop() {
    absl::Time next_check = absl::Now();
    for (;;) {
      std::vector<Pending> batch;
      bool stopping;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this] { return stopping_ || !pending_.empty(); };
        mu_.AwaitWithDeadline(absl::Condition(&ready), next_check);
        stopping = stopping_;
        size_t n = std::min<size_t>(pending_.size(), options_.max_batch_records);
        batch.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(pending_.front()));
          pending_.pop_front();
        }
      }
      if (absl::Now() >= next_check) {
        CheckDisk();
        if (write_failed_.load()) ProbeAfterFailure();
        next_check = absl::Now() + absl::Milliseconds(options_.health_check_interval_ms);
      }
      if (batch.empty()) {
        if (stopping) return;
        continue;
      }
      WriteBatch(batch);
    }
  }

  void WriteBatch(std::vector<Pending>& batch) {
    // Below the disk floor new messages are refused, but outcomes and removals (which
    // free space) still go through.
    if (!disk_ok_.load()) {
      absl::Status refused = absl::UnavailableError(HealthReason());
      std::vector<Pending> rest;
      for (Pending& p : batch) {
        if (p.is_commit) {
          commit_errors_.fetch_add(1);
          p.done(refused);
        } else {
          rest.push_back(std::move(p));
        }
      }
      batch.swap(rest);
      if (batch.empty()) return;
    }
    size_t commits = 0;
    bool sync = false;
    rocksdb::WriteBatch wb;
    for (Pending& p : batch) {
      p.fill(&wb);
      sync = sync || p.sync;
      commits += p.is_commit ? 1 : 0;
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    absl::Status status = RocksToStatus(db_->Write(wo, &wb), "write");
    batches_.fetch_add(1);
    if (status.ok()) {
      commits_.fetch_add(commits);
    } else {
      commit_errors_.fetch_add(commits);
      if (!write_failed_.exchange(true)) {
        MTA_LOG_ERROR("spool: %s; shedding intake until writes succeed", status.ToString());
      }
      SetReason(status.ToString());
    }
    for (Pending& p : batch) p.done(status);
  }

  const RocksDbSpoolOptions options_;
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* envelopes_;
  rocksdb::ColumnFamilyHandle* messages_;
  rocksdb::ColumnFamilyHandle* outcomes_;

  absl::Mutex mu_;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;

  std::atomic<bool> write_failed_{false};
  std::atomic<bool> disk_ok_{true};
  mutable absl::Mutex reason_mu_;
  std::string reason_ ABSL_GUARDED_BY(reason_mu_);
  std::atomic<uint64_t> commits_{0}, batches_{0}, commit_errors_{0};
};

}  // namespace

absl::StatusOr<SpoolPtr> OpenRocksDbSpool(const RocksDbSpoolOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create spool directory ", options.path, ": ", ec.message()));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;

  rocksdb::ColumnFamilyOptions envelope_options;
  envelope_options.OptimizeForPointLookup(64);
  rocksdb::ColumnFamilyOptions message_options;
  // Content is written once and read at most a few times: keep it out of compactions.
  message_options.enable_blob_files = true;
  message_options.min_blob_size = 512;
  message_options.enable_blob_garbage_collection = true;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kEnvelopesCf, envelope_options},
      {kMessagesCf, message_options},
      {kOutcomesCf, rocksdb::ColumnFamilyOptions()},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, cfs, &handles, &db);
  if (!s.ok()) return RocksToStatus(s, absl::StrCat("open ", options.path));
  return SpoolPtr(new RocksDbSpool(options, db, std::move(handles)));
}

}  // namespace mta::queue
