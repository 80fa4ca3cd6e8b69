#include "call.h"

#include <algorithm>

#include "contract.h"
#include "text.h"
#include "wire.h"

namespace gw {
namespace {

const std::string kInfer = "/inference.GRPCInferenceService/ModelInfer";
const std::string kStream = "/inference.GRPCInferenceService/ModelStreamInfer";

grpc::ChannelArguments channel_arguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
  args.SetMaxSendMessageSize(256 * 1024 * 1024);
  return args;
}

template <typename Names>
bool among(const Names& names, grpc::StatusCode code) {
  auto name = status_name(static_cast<int>(code));
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  size_t size = 0;
  for (const auto& s : slices) size += s.size();
  out.reserve(size);
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::chrono::system_clock::time_point after(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace

// --- Front ---------------------------------------------------------------------------------------
Front::Front(const std::string& full_address, SnapshotFile* snapshots, Counters* counters, const RedisLink& redis)
    : snapshots_(snapshots), counters_(counters), quotas_(redis), cache_(redis), tokens_(redis) {
  full_ = std::make_unique<grpc::GenericStub>(
      grpc::CreateCustomChannel(full_address, grpc::InsecureChannelCredentials(), channel_arguments()));
}

grpc::GenericStub* Front::replica(const std::string& address) {
  std::lock_guard<std::mutex> lock(stubs_mu_);
  auto& stub = stubs_[address];
  if (!stub)
    stub = std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), channel_arguments()));
  return stub.get();
}

std::mt19937_64& Front::rng() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng;
}

void Front::configure_generative() {
  // The newest view, not the call's: a call admitted late must not bring back an older pressure.
  std::shared_ptr<const Snapshot> s = snapshots_->current();
  std::lock_guard<std::mutex> lock(mu_);
  if (!s || generative_of_ == s) return;
  generative_of_ = s;
  std::map<std::string, int> slots;
  for (const auto& [model, g] : s->generative) slots[model] = g.slots;
  admission_.set_generative(slots, s->engine_full);
}

Front::Admit Front::acquire(Call* call, const Snapshot& s, const std::string& model, const std::vector<Route>* routes,
                            int rank, Route& out, int& retry_after_ms, uint64_t& seq) {
  Ticket* evicted = nullptr;
  Admit result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    admission_.configure(s.config.queue_max, s.config.initial_limit, s.config.max_limit);
    if (const Route* r = admission_.take(model, *routes, rank)) {
      out = *r;
      return Admit::kNow;
    }
    result = admission_.join(call, model, routes, rank, seq, retry_after_ms, evicted) == Admission::Joined::kQueued
                 ? Admit::kQueued
                 : Admit::kShed;
  }
  if (evicted != nullptr) static_cast<Call*>(evicted)->wake();
  return result;
}

void Front::release(const Snapshot& s, const std::string& model, const Route& route, double seconds, bool overloaded) {
  std::vector<Ticket*> granted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    granted = admission_.release(model, route, seconds, overloaded, s.low_headroom.count(route.node) == 0);
  }
  for (Ticket* t : granted) static_cast<Call*>(t)->wake();
}

bool Front::acquire_other(const Snapshot& s, const std::string& model, const std::vector<Route>& routes,
                          const std::string& failed, int rank, Route& out) {
  std::lock_guard<std::mutex> lock(mu_);
  admission_.eject(model, failed, s.config.eject_s);
  const Route* r = admission_.take(model, routes, rank, failed);
  if (r != nullptr) out = *r;
  return r != nullptr;
}

bool Front::forget(Call* call, const std::string& model, int rank, uint64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  return admission_.leave(call, model, rank, seq);
}

std::map<std::string, std::pair<int, double>> Front::replicas() {
  std::lock_guard<std::mutex> lock(mu_);
  return admission_.replicas();
}

// --- Call ----------------------------------------------------------------------------------------
Call::Call(Front* front, grpc::GenericCallbackServerContext* context) : front_(front), context_(context) {
  if (context_->method() == kInfer || context_->method() == kStream) {
    StartRead(&request_);
  } else {
    front_->counters()->handed_off("method");
    start_bridge(false);
  }
}

void Call::OnReadDone(bool ok) {
  if (mode_ == Mode::kStream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!hold_ || has_refused_) return;
    if (!ok) {
      client_done_ = true;
      upstream_->StartWritesDone();
      return;
    }
    later_request(flatten(in_));
    return;
  }
  if (mode_ == Mode::kBridge) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!hold_) return;
    if (!ok) {
      client_done_ = true;
      upstream_->StartWritesDone();
      return;
    }
    upstream_->StartWrite(&in_);
    return;
  }
  if (context_->method() == kStream) {
    if (!ok) {
      Finish(grpc::Status::OK);  // closed without a request: nothing to answer (as Triton does)
      return;
    }
    started_ = Clock::now();  // a stream's clock starts with its first request, not when it was opened
  }
  if (!ok) {
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
    return;
  }
  decide();
}

// The hot path's checks; anything it cannot answer alone goes to the full gateway.
void Call::decide() {
  snapshot_ = front_->snapshots()->current();
  if (!snapshot_)
    return handoff(front_->snapshots()->refused_reason().empty() ? "no snapshot yet" : "snapshot refused");
  const Snapshot& s = *snapshot_;
  if (front_->snapshots()->stale(s)) return handoff("stale snapshot");
  auto auth = context_->client_metadata().find("authorization");
  if (auth == context_->client_metadata().end()) return handoff("no key");
  std::string header(auth->second.data(), auth->second.size());
  auto space = header.find(' ');
  if (space == std::string::npos) return handoff("no key");
  std::string scheme = header.substr(0, space);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), ::tolower);
  if (scheme != "bearer") return handoff("no key");
  std::string token = header.substr(space + 1);
  token.erase(0, token.find_first_not_of(" \t"));
  token.erase(token.find_last_not_of(" \t") + 1);
  auto key = s.keys.find(sha256_hex(token));
  if (key == s.keys.end()) return handoff("unknown key");
  key_ = &key->second;
  if (key_->expires_at && key_->expires_at <= unix_now()) return handoff("expired key");
  raw_ = flatten(request_);
  if (!model_of(raw_, model_, version_, &request_id_) || model_.empty()) return handoff("malformed");
  auto grants = s.grants.find(key_->tenant_id);
  if (grants == s.grants.end() || !grants->second.count(model_)) return handoff("not granted");
  if (!key_->any_model && !key_->models.count(model_)) return handoff("not granted");
  stream_ = context_->method() == kStream;
  if (stream_) {
    // Streams of generative models (no cache serves a stream); other models' streams are the
    // Python gateway's.
    if (!s.generative.count(model_)) return handoff("stream");
    // Its counts asked for; tensors that are not protobuf are the Python plane's to refuse.
    if (!ask_for_counts(raw_)) return handoff("malformed");
  } else {
    // A model with both caches uses the exact one (as the Python gateway does); the semantic
    // cache (embedding, nearest neighbours, word guard) is the Python gateway's.
    cached_ = s.cached_models.count(model_) && s.cache_tenants.count(key_->tenant_id);
    if (!cached_ && s.semantic_models.count(model_) && s.cache_tenants.count(key_->tenant_id))
      return handoff("semantic cache");
  }
  if (!s.routes.count(model_)) return handoff("no replica");
  routes_ = permitted_routes(s, *key_, model_, version_);
  if (routes_.empty()) return handoff("no permitted replica");
  // A rollout's traffic split, unless the client pinned a version.
  first_ = version_.empty() ? choose_version(s, model_, routes_, front_->rng()) : routes_;
  mode_ = Mode::kNative;
  if (key_->rate > 0 || key_->daily > 0) {
    front_->quotas()->take(Quotas::ask(this, s.config.instance, *key_));
    return;  // quota_done continues
  }
  proceed();
}

// The exact cache (cache.py): looked up under the version that would answer, after the quota
// (a hit is a request too) and before admission (a hit takes no replica slot).
void Call::proceed() {
  if (stream_) return reserve_first();
  if (!cached_) return admit();
  routes_ = first_;  // a retry stays on the version whose answer will be stored under its key
  cache_key(snapshot_->config.instance, key_->tenant_id, model_, first_[0].version, raw_, cache_key_);
  front_->cache()->get(this, cache_key_);  // cache_done continues
}

void Call::cache_done(bool found, std::string answer_bytes) {
  front_->counters()->cache(key_->slug, model_, found);
  if (!found) return admit();
  put_bytes_field(answer_bytes, 3, request_id_);  // the answer is the cached one; the id is this request's
  grpc::Slice slice(answer_bytes);
  response_ = grpc::ByteBuffer(&slice, 1);
  answer(grpc::Status::OK);
}

void Call::quota_done(const Verdict& verdict) {
  if (verdict.allowed) return proceed();
  front_->counters()->shed(model_, key_->rank, verdict.reason == 2 ? "quota" : "rate");
  refuse_with(quota_refusal(*key_, verdict), static_cast<int>(verdict.retry_after_ms));
}

// Admission (admission.cc): a replica slot now, a place in the model's queue, or shed.
void Call::admit() {
  const Snapshot& s = *snapshot_;
  int retry_after_ms = 0;
  wait_ = Wait::kWaiting;  // before the call can appear in a queue (no other thread knows it yet)
  queued_at_ = Clock::now();
  Route route;
  front_->configure_generative();
  auto outcome = front_->acquire(this, s, model_, &first_, key_->rank, route, retry_after_ms, queue_seq_);
  if (outcome == Front::Admit::kNow) {
    wait_ = Wait::kNone;
    return admitted(route, 0.0);
  }
  if (outcome == Front::Admit::kShed) {
    wait_ = Wait::kNone;
    front_->counters()->shed(model_, key_->rank);
    return refuse_with(refuse(contract::refusal::kQueueFull, {{"model", model_}}), retry_after_ms);
  }
  // Queued: wait for a slot, the queue wait limit or the client's deadline, whichever first.
  auto limit = after(s.config.queue_wait_s);
  auto deadline = context_->deadline();
  std::lock_guard<std::mutex> lock(mu_);
  queue_expires_ = deadline < limit;
  if (wait_ == Wait::kWaiting) evicted_hint_ = retry_after_ms;
  // Granted or evicted already (another thread, since acquire returned): end the wait at once.
  auto until = wait_ == Wait::kWaiting ? std::min(limit, deadline) : std::chrono::system_clock::now();
  alarm_set_ = true;
  alarm_.Set(until, [this](bool fired) { waited_out(fired); });  // the callback runs on another thread
}

void Call::granted(const Route& route) {
  std::lock_guard<std::mutex> lock(mu_);
  route_ = route;
  wait_ = Wait::kGranted;
  references_++;  // until wake(): the call may answer and end before the granting thread wakes it
}

void Call::evicted(int retry_after_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  wait_ = Wait::kEvicted;
  evicted_hint_ = retry_after_ms;
  references_++;
}

void Call::wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (alarm_set_) alarm_.Cancel();  // else admit() sees the new state when it sets the alarm
  }
  release_reference();
}

// The alarm ended the wait: it fired (time ran out) or was cancelled (granted, evicted, cancelled).
void Call::waited_out(bool fired) {
  double waited = seconds_since(queued_at_);
  Wait state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    state = wait_;
  }
  if (state == Wait::kWaiting) {
    // Time ran out (or the client went away). Leave the queue unless a slot arrived meanwhile.
    bool left = front_->forget(this, model_, key_->rank, queue_seq_);
    std::lock_guard<std::mutex> lock(mu_);
    state = wait_;
    if (left) wait_ = state = (fired ? Wait::kNone : Wait::kCancelled);
  }
  switch (state) {
    case Wait::kGranted: {
      Route route;
      {
        std::lock_guard<std::mutex> lock(mu_);
        route = route_;
        wait_ = Wait::kNone;
      }
      return admitted(route, waited);
    }
    case Wait::kEvicted:
      front_->counters()->shed(model_, key_->rank);
      return refuse_with(refuse(contract::refusal::kEvicted,
                                {{"model", model_}, {"priority", std::string(contract::kClassNames[key_->rank])}}),
                         evicted_hint_);
    case Wait::kCancelled:
      return refuse_with(refuse(contract::refusal::kCancelled));
    default:
      if (queue_expires_) return refuse_with(refuse(contract::refusal::kExpiredInQueue, {{"model", model_}}));
      front_->counters()->shed(model_, key_->rank);
      return refuse_with(refuse(contract::refusal::kQueueWait,
                                {{"model", model_}, {"wait_s", number(snapshot_->config.queue_wait_s)}}),
                         evicted_hint_);
  }
}

void Call::admitted(const Route& route, double waited) {
  front_->counters()->queued(key_->slug, model_, waited);
  route_ = route;
  if (stream_ && context_->deadline() <= std::chrono::system_clock::now()) {
    // As the Python plane's stream: the version's failure, told as a deadline that passed.
    front_->release(*snapshot_, model_, route_, -1, false);
    front_->counters()->version(model_, version_.empty() ? route_.version : version_, false, 0.0);
    return refuse_with(refuse(contract::refusal::kExpiredBeforeSend));
  }
  if (context_->IsCancelled()) {
    front_->release(*snapshot_, model_, route_, -1, false);
    return refuse_with(refuse(contract::refusal::kCancelled));
  }
  if (stream_) return start_stream();
  send();
}

void Call::send() {
  const Snapshot& s = *snapshot_;
  // Appended to the request in place: on the wire the last occurrence of a field (and of a
  // map key) wins, so a retry's appends override the first attempt's.
  if (version_.empty()) put_bytes_field(raw_, 2, route_.version);
  auto levels = s.priority_levels.find(model_);
  if (levels != s.priority_levels.end() && levels->second >= 3) put_priority(raw_, key_->triton_priority);
  grpc::Slice slice(raw_);
  body_ = grpc::ByteBuffer(&slice, 1);
  {
    std::lock_guard<std::mutex> lock(mu_);  // OnCancel may be cancelling the previous attempt's context
    upstream_context_ = std::make_unique<grpc::ClientContext>();
  }
  upstream_context_->set_deadline(std::min(context_->deadline(), after(s.config.default_timeout_s)));
  sent_at_ = Clock::now();
  front_->replica(route_.address)
      ->UnaryCall(upstream_context_.get(), kInfer, grpc::StubOptions(), &body_, &response_,
                  [this](grpc::Status status) { sent(status); });
}

void Call::sent(const grpc::Status& status) {
  const Snapshot& s = *snapshot_;
  double latency = seconds_since(sent_at_);
  auto code = status.error_code();
  // The replica was not there to answer: its Triton is down (UNAVAILABLE) or up without the
  // model (NOT_FOUND: restarted, still reloading; only live versions are ever sent to).
  bool missing = among(contract::kReplicaMissing, code);
  if (missing && attempt_ + 1 < contract::kAttempts && !context_->IsCancelled()) {
    // Once more on another one, within the deadline.
    attempt_++;
    front_->counters()->retried(model_);
    front_->release(s, model_, route_, -1, false);
    Route other;
    if (front_->acquire_other(s, model_, routes_, route_.address, key_->rank, other)) {
      route_ = other;
      return send();
    }
    // No other replica with room: the full gateway retries (after a pause, with a fresh view).
    front_->counters()->handed_off("unavailable");
    return start_bridge(true);
  }
  front_->release(s, model_, route_, latency, among(contract::kOverloaded, code));
  front_->counters()->version(model_, route_.version, status.ok(), latency);
  if (status.ok()) {
    if (cached_) front_->cache()->put(cache_key_, flatten(response_), snapshot_->config.cache_ttl_s);
    answer(grpc::Status::OK);
  } else if (code == grpc::StatusCode::NOT_FOUND) {  // the model exists: it is not loaded there yet
    refuse_with(refuse(contract::refusal::kNotLoaded, {{"model", model_}}));
  } else if (status.error_message().empty()) {
    answer(grpc::Status(code, std::string(contract::refusal::kUpstreamError.text)));
  } else {
    answer(grpc::Status(code, status.error_message()));
  }
}

void Call::refuse_with(const Refused& refused, int retry_after_ms) {
  answer(grpc::Status(static_cast<grpc::StatusCode>(refused.code), refused.text), retry_after_ms);
}

// The native path's answer, counted like the Python gateway counts its own.
void Call::answer(const grpc::Status& status, int retry_after_ms) {
  if (stream_) {  // refused before it reached its replica: nothing was generated, all of it back
    if (status.error_code() != grpc::StatusCode::CANCELLED)  // a client that left is no refusal
      front_->counters()->stream_answered(key_->slug, model_, status.ok(), seconds_since(started_));
    settle();
  } else {
    front_->counters()->answered(key_->slug, model_, std::string(status_name(static_cast<int>(status.error_code()))),
                                 seconds_since(started_));
  }
  if (retry_after_ms >= 0)
    context_->AddTrailingMetadata(std::string(contract::kRetryAfterHeader), std::to_string(retry_after_ms));
  if (status.ok()) {
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  } else {
    Finish(status);
  }
}

// --- bridge to the full gateway ----------------------------------------------------------------
void Call::handoff(const char* reason) {
  front_->counters()->handed_off(reason);
  start_bridge(true);
}

void Call::start_bridge(bool have_first_message) {
  mode_ = Mode::kBridge;
  for (const auto& [name, value] : context_->client_metadata()) {
    std::string key(name.data(), name.size());
    if (key.empty() || key[0] == ':' || key.rfind("grpc-", 0) == 0 || key == "user-agent" || key == "te" ||
        key == "content-type" || key == "host")
      continue;
    bridge_context_.AddMetadata(key, std::string(value.data(), value.size()));
  }
  bridge_context_.set_deadline(context_->deadline());
  {
    std::lock_guard<std::mutex> lock(mu_);
    references_++;
  }
  upstream_ = std::make_unique<Upstream>(this);
  front_->full()->PrepareBidiStreamingCall(&bridge_context_, context_->method(), grpc::StubOptions(), upstream_.get());
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
    upstream_->AddHold();
  }
  upstream_->StartRead(&out_);
  if (have_first_message) {
    // Native attempts may have written into response_; the bridge starts clean.
    in_ = request_;
    upstream_->StartWrite(&in_);
  } else {
    StartRead(&in_);
  }
  upstream_->StartCall();
}

void Call::UpstreamWriteDone(bool ok) {
  if (ok) StartRead(&in_);  // the next message from the client
}

void Call::UpstreamReadDone(bool ok) {
  if (ok && mode_ == Mode::kStream) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (has_refused_) {  // the stream ends with its refusal: what the replica still sends is drained
        if (hold_) upstream_->StartRead(&out_);
        return;
      }
    }
    on_response(flatten(out_));
  }
  if (ok) {
    StartWrite(&out_);  // upstream's next read starts when this write is done
    return;
  }
  release_hold(false);  // the upstream stream ended: nothing more will be sent or read on it
}

void Call::OnWriteDone(bool ok) {
  if (mode_ != Mode::kBridge && mode_ != Mode::kStream) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!hold_) return;
    if (ok) {
      upstream_->StartRead(&out_);
      return;
    }
  }
  release_hold(true);  // the client is gone
}

void Call::release_hold(bool cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!hold_) return;
  hold_ = false;
  if (cancel) bridge_context_.TryCancel();
  upstream_->RemoveHold();  // OnDone, if due, is scheduled on another thread, never run inline here
}

void Call::UpstreamDone(const grpc::Status& status) {
  if (mode_ == Mode::kStream) {
    stream_done(status);
    release_reference();
    return;
  }
  for (const auto& [name, value] : bridge_context_.GetServerTrailingMetadata())
    context_->AddTrailingMetadata(std::string(name.data(), name.size()), std::string(value.data(), value.size()));
  Finish(status);
  release_reference();
}

void Call::OnCancel() {
  if (mode_ == Mode::kBridge || mode_ == Mode::kStream) {
    release_hold(true);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (wait_ == Wait::kWaiting && alarm_set_) {
    alarm_.Cancel();  // waited_out runs and finds it still waiting: leaves the queue, answers CANCELLED
  } else if (upstream_context_) {
    upstream_context_->TryCancel();
  }
}

void Call::OnDone() {
  if (mode_ == Mode::kBridge || mode_ == Mode::kStream) release_hold(true);
  release_reference();
}

void Call::release_reference() {
  bool last;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last = --references_ == 0;
  }
  if (last) delete this;
}

// --- generative streams (server.py model_stream_infer) ------------------------------------------
// Every request of the stream asks for its token counts and, for a key with token limits,
// reserves its max_tokens in the tenant's minute (tokens.cc); the stream holds one replica slot
// for its whole life; the responses' counts give the time to first token, the time between
// token chunks and the decoding speed; what was reserved and not generated goes back at the end.

// What a request (its counts already asked for) may generate, against the key's limits; false
// (refused_ set) when it is refused.
bool Call::tokens_for(const std::string& request, long long& asked, bool& store) {
  store = false;
  if (!limited_) return true;
  std::string why;
  long long context = snapshot_->generative.at(model_).context;
  Refused refused{0, ""};
  if (!max_tokens_of(request, context, asked, why)) {
    refused = refuse(contract::refusal::kBadSampling, {{"why", why}});
  } else if (within_caps(*key_, asked, store, refused)) {
    return true;
  }
  front_->counters()->shed(model_, key_->rank, "tokens");
  has_refused_ = true;
  refused_ = refused;
  return false;
}

void Call::reserve_first() {
  limited_ = key_->tokens_per_minute > 0 || key_->max_tokens > 0;
  arrivals_.push_back(started_);  // a client's time to first token counts from its arrival (queueing included)
  bool store;
  if (!tokens_for(raw_, asked_, store)) {
    has_refused_ = false;  // answered before the stream: refuse_with says it
    return refuse_with(refused_);
  }
  if (!store) return admit();
  {
    std::lock_guard<std::mutex> lock(mu_);
    references_++;  // until tokens_done
  }
  front_->tokens()->reserve(this, TokenStore::prefix(snapshot_->config.instance, key_->tenant_id),
                            key_->tokens_per_minute, asked_);
}

void Call::tokens_done(bool allowed, long long retry_after_ms, long long minute, bool stored) {
  bool later, over = stored && !allowed;
  auto over_tokens = [&] {
    front_->counters()->shed(model_, key_->rank, "tokens");
    return refuse(contract::refusal::kOverTokens, {{"tenant", key_->slug},
                                                   {"tpm", std::to_string(key_->tokens_per_minute)},
                                                   {"retry_ms", std::to_string(retry_after_ms)}});
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    later = reserving_later_;
    reserving_later_ = false;
    if (stored && allowed && settled_) {
      // The stream ended while this reservation was under way: nothing will use it.
      front_->tokens()->give_back(TokenStore::prefix(snapshot_->config.instance, key_->tenant_id) +
                                      std::to_string(minute),
                                  asked_);
    } else if (stored && allowed) {
      budget_.reserved += asked_;
      budget_.minutes[minute] += asked_;
    }
    if (later && hold_) {
      if (over)
        refuse_in_stream(over_tokens(), static_cast<int>(retry_after_ms));
      else
        write_upstream(std::move(pending_));
    } else if (later && over) {
      over_tokens();  // counted as a refusal; the stream already ended
    }
  }
  if (!later) {
    if (over)
      refuse_with(over_tokens(), static_cast<int>(retry_after_ms));
    else
      admit();
  }
  release_reference();
}

void Call::start_stream() {
  const Snapshot& s = *snapshot_;
  chosen_ = version_.empty() ? route_.version : version_;
  if (version_.empty()) put_bytes_field(raw_, 2, chosen_);
  grpc::Slice slice(raw_);
  in_ = grpc::ByteBuffer(&slice, 1);
  // The client's deadline, or the gateway's default: a wedged replica must not hold a stream
  // (and its slot) forever.
  auto deadline = context_->deadline();
  bridge_context_.set_deadline(deadline == std::chrono::system_clock::time_point::max() ? after(s.config.default_timeout_s)
                                                                                       : deadline);
  {
    std::lock_guard<std::mutex> lock(mu_);
    references_++;  // the upstream call's, until UpstreamDone
  }
  upstream_ = std::make_unique<Upstream>(this);
  front_->replica(route_.address)->PrepareBidiStreamingCall(&bridge_context_, kStream, grpc::StubOptions(), upstream_.get());
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
    upstream_->AddHold();
    stream_started_ = Clock::now();
    mode_ = Mode::kStream;
  }
  upstream_->StartRead(&out_);
  upstream_->StartWrite(&in_);
  upstream_->StartCall();
  if (context_->IsCancelled()) release_hold(true);  // the client left while the stream was set up
}

// A later request of the stream: the same model and version, reserved like the first.
void Call::later_request(std::string raw) {
  std::string name, version;
  if (!model_of(raw, name, version) || !ask_for_counts(raw))  // its counts asked for, or not a message
    return refuse_in_stream(refuse(contract::refusal::kNotAMessage, {{"what", "ModelInferRequest"}}));
  if (name != model_ || (!version.empty() && version != chosen_))
    return refuse_in_stream(refuse(contract::refusal::kStreamOneVersion));
  bool store;
  if (!tokens_for(raw, asked_, store)) {
    has_refused_ = false;
    return refuse_in_stream(refused_);
  }
  if (version.empty()) put_bytes_field(raw, 2, chosen_);
  if (!store) return write_upstream(std::move(raw));
  reserving_later_ = true;
  pending_ = std::move(raw);
  references_++;  // until tokens_done
  front_->tokens()->reserve(this, TokenStore::prefix(snapshot_->config.instance, key_->tenant_id),
                            key_->tokens_per_minute, asked_);
}

void Call::write_upstream(std::string raw) {
  arrivals_.push_back(Clock::now());
  grpc::Slice slice(raw);
  in_ = grpc::ByteBuffer(&slice, 1);
  upstream_->StartWrite(&in_);
}

// A later request refused: the call to the replica is cancelled, and the client's stream ends
// with the refusal (stream_done), which is not the version's failure.
void Call::refuse_in_stream(const Refused& refused, int retry_after_ms) {
  if (has_refused_) return;
  has_refused_ = true;
  refused_ = refused;
  refused_retry_ms_ = retry_after_ms;
  bridge_context_.TryCancel();
}

void Call::on_response(const std::string& raw) {
  auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (first_response_ < 0) first_response_ = std::chrono::duration<double>(now - stream_started_).count();
  responses_++;
  // A request of the stream that failed in Triton or the engine is answered in the stream (the
  // call itself ends OK): it is the version's error all the same.
  if (stream_error(raw)) failed_++;
  if (long long tokens = budget_.count(raw)) {
    if (!has_last_token_) {
      double ttft = std::chrono::duration<double>(now - arrivals_.front()).count();
      front_->counters()->ttft(model_, chosen_, ttft);
      if (first_ttft_ < 0) first_ttft_ = ttft;
    } else {
      double gap = std::chrono::duration<double>(now - last_token_).count();
      front_->counters()->inter_token(model_, chosen_, gap);
      decode_tokens_ += tokens;
      decode_s_ += gap;
    }
    last_token_ = now;
    has_last_token_ = true;
  }
  if (budget_.ended) {  // that request is done: the next one's clock starts at its arrival
    has_last_token_ = false;
    if (arrivals_.size() > 1) arrivals_.pop_front();
  }
}

void Call::stream_done(const grpc::Status& status) {
  const Snapshot& s = *snapshot_;
  // A stream's length says nothing about the replica's load: no latency sample.
  front_->release(s, model_, route_, -1, false);
  double seconds = seconds_since(stream_started_);
  grpc::Status final = status;
  bool ok = false, left = false, refused;
  Counters::Stream tally;
  {
    std::lock_guard<std::mutex> lock(mu_);
    refused = has_refused_;
    if (refused) {
      if (refused_retry_ms_ >= 0)
        context_->AddTrailingMetadata(std::string(contract::kRetryAfterHeader), std::to_string(refused_retry_ms_));
      final = grpc::Status(static_cast<grpc::StatusCode>(refused_.code), refused_.text);
    } else if (status.ok()) {
      ok = failed_ == 0;
    } else if (context_->IsCancelled()) {
      // The client went away (cancelled, closed its connection) before its deadline, and no
      // answer failed: not the version's failure. A deadline that passed is.
      left = failed_ == 0 && std::chrono::system_clock::now() < context_->deadline();
    } else if (status.error_message().empty()) {
      final = grpc::Status(status.error_code(), std::string(contract::refusal::kUpstreamError.text));
    }
    tally.first_response_s = first_response_;
    tally.seconds = seconds;
    tally.responses = responses_;
    tally.output_tokens = budget_.counted;
    tally.input_tokens = budget_.prompt;
    tally.decode_tokens = decode_tokens_;
    tally.decode_s = decode_s_;
  }
  settle();
  Counters* counters = front_->counters();
  // The version's statistics judge rollouts: a generative stream's latency there is its time to
  // first token (a long answer is not a slow one). A client refused, or one that left, is not the
  // version's failure.
  if (!refused && !left) counters->version(model_, chosen_, ok, first_ttft_ >= 0 ? first_ttft_ : seconds);
  counters->stream_ended(key_->slug, model_, chosen_, tally);
  counters->stream_answered(key_->slug, model_, ok || left, seconds);
  Finish(final);
}

// Gives back what the stream reserved and did not generate (all of it, if nothing was).
void Call::settle() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!limited_) return;
  std::string prefix = TokenStore::prefix(snapshot_->config.instance, key_->tenant_id);
  for (const auto& [minute, back] : budget_.unused()) front_->tokens()->give_back(prefix + std::to_string(minute), back);
  settled_ = true;
  budget_.reserved = 0;
  budget_.minutes.clear();
}

}  // namespace gw
