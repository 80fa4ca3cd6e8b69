// One call on the public port (server.py's Handlers are the Python twin): unary ModelInfer and
// generative models' ModelStreamInfer on the hot path are served natively; everything else is
// bridged, message for message, to the full Python gateway. Front is the service: the shared
// state every call uses.
#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "admission.h"
#include "clock.h"
#include "counters.h"
#include "refusals.h"
#include "snapshot.h"
#include "stores.h"
#include "tokens.h"

namespace gw {

class Front;

class Call final : public grpc::ServerGenericBidiReactor,
                   public Ticket,
                   public QuotaWaiter,
                   public CacheWaiter,
                   public TokenWaiter {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Admission hands a queued call its replica, or evicts it for a higher class (both under the
  // admission lock: they record and take a reference); wake() then ends the wait.
  void granted(const Route& route) override;
  void evicted(int retry_after_ms) override;
  void wake();
  void quota_done(const Verdict& verdict) override;
  void cache_done(bool found, std::string answer) override;
  void tokens_done(bool allowed, long long retry_after_ms, long long minute, bool stored) override;

 private:
  // kStream: a generative stream on its replica (after kNative's checks and admission).
  enum class Mode { kReading, kNative, kBridge, kStream };
  enum class Wait { kNone, kWaiting, kGranted, kEvicted, kCancelled };

  class Upstream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(Call* call) : call_(call) {}
    void OnWriteDone(bool ok) override { call_->UpstreamWriteDone(ok); }
    void OnWritesDoneDone(bool) override {}
    void OnReadDone(bool ok) override { call_->UpstreamReadDone(ok); }
    void OnDone(const grpc::Status& status) override { call_->UpstreamDone(status); }

   private:
    Call* call_;
  };

  void decide();
  void proceed();
  void admit();
  void handoff(const char* reason);
  void start_bridge(bool have_first_message);
  void UpstreamWriteDone(bool ok);
  void UpstreamReadDone(bool ok);
  void UpstreamDone(const grpc::Status& status);
  void admitted(const Route& route, double waited);
  void waited_out(bool fired);
  void send();
  void sent(const grpc::Status& status);
  void answer(const grpc::Status& status, int retry_after_ms = -1);
  void refuse_with(const Refused& refused, int retry_after_ms = -1);
  void release_reference();
  void release_hold(bool cancel);

  // Generative streams (server.py model_stream_infer is the Python twin).
  void reserve_first();
  bool tokens_for(const std::string& request, long long& asked, bool& store);  // false: refused_ is set
  void start_stream();
  void later_request(std::string raw);  // under mu_
  void write_upstream(std::string raw);  // under mu_
  void refuse_in_stream(const Refused& refused, int retry_after_ms = -1);  // under mu_
  void on_response(const std::string& raw);
  void stream_done(const grpc::Status& status);
  void settle();

  Front* front_;
  bool cached_ = false;  // the model's exact cache is on for this tenant
  std::string cache_key_, request_id_;
  uint64_t queue_seq_ = 0;  // set by admission (under its lock) when the call joins a queue
  bool alarm_set_ = false;
  // The bridge's hold on the upstream call: its ops are started from the server side's
  // reactions (outside its own), so it must not finish while one may still be started.
  // Taken before StartCall, given back (under mu_) once no op will follow.
  bool hold_ = false;
  grpc::GenericCallbackServerContext* context_;
  std::atomic<Mode> mode_{Mode::kReading};
  Clock::time_point started_ = Clock::now();
  grpc::ByteBuffer request_, response_;

  // Native path.
  std::shared_ptr<const Snapshot> snapshot_;
  const KeyEntry* key_ = nullptr;
  std::string raw_, model_, version_;
  std::vector<Route> routes_;  // permitted for this tenant
  std::vector<Route> first_;   // of the version the traffic split drew
  Route route_;
  int attempt_ = 0;
  Clock::time_point sent_at_;
  std::unique_ptr<grpc::ClientContext> upstream_context_;
  grpc::ByteBuffer body_;
  Wait wait_ = Wait::kNone;
  int evicted_hint_ = 0;
  Clock::time_point queued_at_;
  bool queue_expires_ = false;
  grpc::Alarm alarm_;

  // A generative stream (the budget, arrivals and timings under mu_).
  bool stream_ = false;
  bool limited_ = false;  // the key has token limits: each request reserves its max_tokens
  std::string chosen_;    // the version that answers the stream
  Budget budget_;
  long long asked_ = 0;  // the reservation under way
  bool reserving_later_ = false;
  bool settled_ = false;  // what was reserved and not used went back: a later reservation goes back at once
  std::string pending_;  // a later request waiting for its reservation
  bool has_refused_ = false;
  Refused refused_{0, ""};
  int refused_retry_ms_ = -1;
  Clock::time_point stream_started_, last_token_;
  std::deque<Clock::time_point> arrivals_;  // when each request not yet answered in full arrived
  bool has_last_token_ = false;
  double first_ttft_ = -1, first_response_ = -1, decode_s_ = 0;
  long long responses_ = 0, failed_ = 0, decode_tokens_ = 0;

  // Bridge (and a native stream's upstream call).
  std::unique_ptr<Upstream> upstream_;
  grpc::ClientContext bridge_context_;
  grpc::ByteBuffer in_, out_;
  bool client_done_ = false;

  std::mutex mu_;
  int references_ = 1;  // the server reactor; +1 while an upstream bridge call is alive
};

class Front final : public grpc::CallbackGenericService {
 public:
  Front(const std::string& full_address, SnapshotFile* snapshots, Counters* counters, const RedisLink& redis);

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new Call(this, context);
  }

  grpc::GenericStub* full() { return full_.get(); }
  grpc::GenericStub* replica(const std::string& address);
  Quotas* quotas() { return &quotas_; }
  CacheStore* cache() { return &cache_; }
  TokenStore* tokens() { return &tokens_; }
  SnapshotFile* snapshots() { return snapshots_; }
  Counters* counters() { return counters_; }
  std::mt19937_64& rng();

  // Admission's generative slots and engine pressure from the newest view, once per view.
  void configure_generative();
  // Admission under its lock; the tickets it granted or evicted are woken after.
  enum class Admit { kNow, kQueued, kShed };
  Admit acquire(Call* call, const Snapshot& s, const std::string& model, const std::vector<Route>* routes, int rank,
                Route& out, int& retry_after_ms, uint64_t& seq);
  void release(const Snapshot& s, const std::string& model, const Route& route, double seconds, bool overloaded);
  // The retry: the failed replica passed over for eject_s, a slot on another one with room.
  bool acquire_other(const Snapshot& s, const std::string& model, const std::vector<Route>& routes,
                     const std::string& failed, int rank, Route& out);
  bool forget(Call* call, const std::string& model, int rank, uint64_t seq);
  std::map<std::string, std::pair<int, double>> replicas();

 private:
  SnapshotFile* snapshots_;
  Counters* counters_;
  std::unique_ptr<grpc::GenericStub> full_;
  Quotas quotas_;
  CacheStore cache_;
  TokenStore tokens_;
  std::mutex stubs_mu_;
  std::unordered_map<std::string, std::unique_ptr<grpc::GenericStub>> stubs_;
  std::mutex mu_;
  Admission admission_;
  std::shared_ptr<const Snapshot> generative_of_;  // the view admission's generative slots came from
};

}  // namespace gw
