// Shard's delivery half: the delivery manager, accepted and recovered mail handed to it,
// policy reloads, and the once-a-second bookkeeping. (Listeners, inbound connections and
// intake are in shard.cc.)
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mta/server/shard.h"
#include "mta/server/shard_telemetry.h"

namespace mta::server {

void Shard::AddRecovered(queue::Envelope envelope) {
  if (context_->delivery_enabled) {
    recovered_.push_back(std::move(envelope));
  } else {
    Enqueue(std::move(envelope), std::nullopt);
  }
}

absl::Status Shard::StartDelivery() {
  auto resolver = dns::CaresResolver::Create(loop_.get(), context_->dns);
  if (!resolver.ok()) return resolver.status();
  resolver_ = *std::move(resolver);
  if (telemetry_ != nullptr) {
    resolver_ = std::make_unique<CountingResolver>(std::move(resolver_), telemetry_.get());
  }
  ServerContext* ctx = context_;
  delivery_ = std::make_unique<delivery::DeliveryManager>(
      index_, ctx->shards.size(), loop_.get(), ctx->spool, ctx->loader, &ids_, resolver_.get(),
      ctx->delivery, ctx->policy,
      [ctx](uint32_t shard, absl::AnyInvocable<void(delivery::DeliveryManager&)> fn) {
        Shard* target = ctx->shards[shard];
        if (target->loop_ == nullptr) return;  // start-up failed before that shard ran
        target->loop_->Post([target, fn = std::move(fn)]() mutable {
          if (target->delivery_ != nullptr) fn(*target->delivery_);
        });
      },
      [this](delivery::Destination& d, const delivery::EgressSource* source) {
        delivery::StartOutboundConnection(&outbound_, &d, source);
      });
  delivery_->set_observer(telemetry_.get());
  outbound_ = ctx->outbound;
  outbound_.loop = loop_.get();
  outbound_.manager = delivery_.get();
  outbound_.resolver = resolver_.get();
  outbound_.loader = ctx->loader;
  return absl::OkStatus();
}

void Shard::ApplyPolicy(std::shared_ptr<const delivery::TrafficPolicy> policy) {
  loop_->Post([this, policy = std::move(policy)]() mutable {
    policy_ = policy;
    if (delivery_ != nullptr) delivery_->SetPolicy(std::move(policy));
  });
}

void Shard::Tick(absl::Time deadline, uint64_t tick) {
  // Messages also leave the queue when their last recipient is settled: /healthz's count.
  uint64_t at_home = delivery_ != nullptr ? delivery_->messages_at_home() : queue_.size();
  queued_.store(at_home, std::memory_order_relaxed);
  if (telemetry_ != nullptr) {
    // absl::Now(), not the loop's cached time: the lag is how late this timer runs.
    telemetry_->LoopLag(std::max(absl::ZeroDuration(), absl::Now() - deadline));
    if (tick % 2 == 0) {
      telemetry_->QueueGauges(delivery_ != nullptr
                                  ? delivery_->QueueSummary()
                                  : std::vector<delivery::DeliveryManager::QueueRow>(),
                              at_home, loop_->Now());
    }
  }
  absl::Time next = loop_->Now() + absl::Seconds(1);
  loop_->AddTimer(next, [this, next, tick] { Tick(next, tick + 1); });
}

void Shard::Enqueue(queue::Envelope envelope, std::optional<std::string> content) {
  if (delivery_ != nullptr) {
    auto message = std::make_shared<delivery::DeliveryMessage>();
    message->envelope = std::move(envelope);
    queue::BodyBudget* budget = context_->body_budget;
    if (content.has_value() && budget->TryAcquire()) {
      // The body stays in RAM while any job needs it; the budget is returned with it.
      message->content = std::shared_ptr<const std::string>(new std::string(*std::move(content)),
                                                            [budget](const std::string* c) {
                                                              delete c;
                                                              budget->Release();
                                                            });
    }
    delivery_->AddMessage(std::move(message));
    queued_.store(delivery_->messages_at_home(), std::memory_order_relaxed);
    return;
  }
  queue_.Add(std::move(envelope), std::move(content));
  queued_.store(queue_.size(), std::memory_order_relaxed);
}

}  // namespace mta::server
