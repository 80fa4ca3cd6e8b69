#include "stores.h"

#include <iostream>
#include <thread>

#include "contract.h"
#include "text.h"
#include "wire.h"

namespace gw {

Refused quota_refusal(const KeyEntry& key, const Verdict& verdict) {
  if (verdict.reason == 2)
    return refuse(contract::refusal::kOverQuota, {{"tenant", key.slug}, {"daily", std::to_string(key.daily)}});
  return refuse(contract::refusal::kOverRate, {{"tenant", key.slug},
                                               {"rate", std::to_string(key.rate)},
                                               {"retry_ms", std::to_string(verdict.retry_after_ms)}});
}

bool cache_key(const std::string& instance, const std::string& tenant, const std::string& model,
               const std::string& version, const std::string& raw, std::string& key) {
  std::string name, pinned, content;
  if (!model_of(raw, name, pinned, nullptr, &content)) return false;
  key = fill(contract::kKeyCache, {{"instance", instance},
                                   {"tenant", tenant},
                                   {"model", model},
                                   {"version", version},
                                   {"digest", sha256_hex(content)}});
  return true;
}

void Warning::operator()(const char* message) {
  if (Clock::now() - last < std::chrono::seconds(10)) return;
  last = Clock::now();
  std::cerr << "gatewayd: " << message << std::endl;
}

Quotas::Ask Quotas::ask(QuotaWaiter* waiter, const std::string& instance, const KeyEntry& key) {
  return Ask{waiter,
             fill(contract::kKeyQuotaBucket, {{"instance", instance}, {"tenant", key.tenant_id}}),
             fill(contract::kKeyQuotaDay, {{"instance", instance}, {"tenant", key.tenant_id}}),
             key.rate,
             key.burst ? key.burst : key.rate,
             key.daily};
}

Scripts::Scripts(RedisLink link, std::vector<std::string> bodies)
    : link_(std::move(link)), bodies_(std::move(bodies)), shas_(bodies_.size()) {}

bool Scripts::run(const std::vector<Eval>& batch, const std::function<void(size_t, const redisReply*)>& answer) {
  std::vector<size_t> pending(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) pending[i] = i;
  for (int attempt = 0; attempt < 2 && !pending.empty(); ++attempt) {
    redisContext* before = link_.context;
    if (!link_.connect()) return false;
    if (link_.context != before) shas_.assign(bodies_.size(), "");  // a new connection may face a restarted Redis
    redisContext* redis = link_.context;
    for (size_t i = 0; i < bodies_.size(); ++i) {
      if (!shas_[i].empty()) continue;
      auto* reply = static_cast<redisReply*>(redisCommand(redis, "SCRIPT LOAD %b", bodies_[i].data(), bodies_[i].size()));
      if (reply == nullptr || reply->type != REDIS_REPLY_STRING) {  // SCRIPT LOAD answers the SHA-1 EVALSHA needs
        if (reply) freeReplyObject(reply);
        return false;
      }
      shas_[i].assign(reply->str, reply->len);
      freeReplyObject(reply);
    }
    for (size_t index : pending) {
      std::vector<const char*> argv = {"EVALSHA", shas_[batch[index].script].c_str()};
      for (const auto& arg : batch[index].args) argv.push_back(arg.c_str());
      redisAppendCommandArgv(redis, static_cast<int>(argv.size()), argv.data(), nullptr);
    }
    // Answered in order; only the commands Redis did not know the script of are asked again
    // (each of the others ran once: a reservation must never be taken twice).
    std::vector<size_t> again;
    for (size_t index : pending) {
      void* raw = nullptr;
      if (redisGetReply(redis, &raw) != REDIS_OK) return false;  // the context reconnects next time
      auto* reply = static_cast<redisReply*>(raw);
      if (reply->type == REDIS_REPLY_ERROR && std::string(reply->str, reply->len).rfind("NOSCRIPT", 0) == 0)
        again.push_back(index);
      else
        answer(index, reply);
      freeReplyObject(reply);
    }
    if (!again.empty()) shas_.assign(bodies_.size(), "");  // Redis was restarted or flushed its scripts: load again
    pending.swap(again);
  }
  return pending.empty();
}

Quotas::Quotas(RedisLink link) : scripts_(std::move(link), {std::string(contract::kQuotaScript)}) {
  std::thread([this] { run(); }).detach();
}

void Quotas::run() {
  for (;;) {
    std::vector<Ask> batch = queue_.take();
    std::vector<Verdict> verdicts(batch.size());
    std::vector<Scripts::Eval> evals;
    for (const auto& ask : batch)
      evals.push_back({0, {"2", ask.bucket, ask.day, std::to_string(ask.rate), std::to_string(ask.burst),
                           std::to_string(ask.daily)}});
    bool stored = scripts_.run(evals, [&](size_t i, const redisReply* reply) {
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        verdicts[i].allowed = reply->element[0]->integer == 1;
        verdicts[i].retry_after_ms = reply->element[1]->integer;
        verdicts[i].reason = static_cast<int>(reply->element[2]->integer);
      }
    });
    if (!stored) warn_("quota store unavailable; serving without limits");  // the unanswered are allowed: fail open
    for (size_t i = 0; i < batch.size(); ++i) batch[i].waiter->quota_done(verdicts[i]);
  }
}

CacheStore::CacheStore(RedisLink link) : link_(std::move(link)) {
  std::thread([this] { run(); }).detach();
}

void CacheStore::run() {
  for (;;) {
    std::vector<Job> batch = queue_.take();
    std::vector<std::pair<bool, std::string>> found(batch.size());
    bool ok = link_.connect();
    if (ok) {
      for (const auto& job : batch) {
        if (job.waiter != nullptr) {
          const char* argv[] = {"GET", job.key.c_str()};
          size_t lens[] = {3, job.key.size()};
          redisAppendCommandArgv(link_.context, 2, argv, lens);
        } else {
          std::string ttl = std::to_string(job.ttl_s);
          const char* argv[] = {"SET", job.key.c_str(), job.value.data(), "EX", ttl.c_str()};
          size_t lens[] = {3, job.key.size(), job.value.size(), 2, ttl.size()};
          redisAppendCommandArgv(link_.context, 5, argv, lens);
        }
      }
      for (size_t i = 0; i < batch.size() && ok; ++i) {
        void* raw = nullptr;
        if (redisGetReply(link_.context, &raw) != REDIS_OK) {
          ok = false;
          break;
        }
        auto* reply = static_cast<redisReply*>(raw);
        if (batch[i].waiter != nullptr && reply->type == REDIS_REPLY_STRING)
          found[i] = {true, std::string(reply->str, reply->len)};
        freeReplyObject(reply);
      }
    }
    if (!ok) {
      for (auto& f : found) f = {false, ""};  // a miss, never a failed request
      warn_("response cache unavailable; serving from Triton");
    }
    for (size_t i = 0; i < batch.size(); ++i)
      if (batch[i].waiter != nullptr) batch[i].waiter->cache_done(found[i].first, std::move(found[i].second));
  }
}

}  // namespace gw
