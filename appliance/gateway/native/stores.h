// The front's Redis stores (quota.py and cache.py are the Python twins): per-tenant rate
// limits and daily quotas (contract.QUOTA_SCRIPT against contract.KEY_QUOTA_*, the very same
// script and keys as the Python plane) and the exact response cache (contract.KEY_CACHE). One
// thread each pipelines whatever is waiting into one round trip. Redis unreachable: quotas
// fail open (served) and the cache misses, as in the Python plane.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "clock.h"
#include "counters.h"
#include "refusals.h"
#include "snapshot.h"

namespace gw {

struct Verdict {
  bool allowed = true;
  long long retry_after_ms = 0;
  int reason = 0;  // 1 rate, 2 quota (contract.QUOTA_REASONS)
};

// What the front answers a tenant over its rate limit or daily quota.
Refused quota_refusal(const KeyEntry& key, const Verdict& verdict);

// contract.KEY_CACHE for a request: tenant, model, the version that answers, and the sha256 of
// the request without its version and id. False if the request is not well-formed protobuf.
bool cache_key(const std::string& instance, const std::string& tenant, const std::string& model,
               const std::string& version, const std::string& raw, std::string& key);

// Work for one Redis thread: callers push, the thread takes everything waiting at once.
template <typename T>
class BatchQueue {
 public:
  void push(T item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      items_.push_back(std::move(item));
    }
    ready_.notify_one();
  }
  std::vector<T> take() {  // blocks until something is waiting
    std::unique_lock<std::mutex> lock(mu_);
    ready_.wait(lock, [this] { return !items_.empty(); });
    std::vector<T> batch;
    batch.swap(items_);
    return batch;
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  std::vector<T> items_;
};

// A warning at most every 10 s (one Redis thread's, while Redis is away).
struct Warning {
  Clock::time_point last{};
  void operator()(const char* message);
};

// Lua scripts run with EVALSHA over one connection, a batch pipelined in one round trip. Each
// script is loaded (SCRIPT LOAD) on a new connection, and again when Redis answers NOSCRIPT
// (restarted, or its scripts flushed), then the batch is asked once more.
class Scripts {
 public:
  Scripts(RedisLink link, std::vector<std::string> bodies);
  struct Eval {
    size_t script;                  // its index in `bodies`
    std::vector<std::string> args;  // numkeys, keys, then the script's arguments
  };
  // `answer` gets each command's reply (by its index in `batch`). False when Redis could not
  // answer them all (those it did answer were given to `answer`).
  bool run(const std::vector<Eval>& batch, const std::function<void(size_t, const redisReply*)>& answer);

 private:
  RedisLink link_;
  std::vector<std::string> bodies_, shas_;
};

class QuotaWaiter {
 public:
  virtual ~QuotaWaiter() = default;
  virtual void quota_done(const Verdict& verdict) = 0;  // on the quota thread
};

class CacheWaiter {
 public:
  virtual ~CacheWaiter() = default;
  virtual void cache_done(bool found, std::string answer) = 0;  // on the cache thread
};

class Quotas {
 public:
  struct Ask {
    QuotaWaiter* waiter;
    std::string bucket, day;
    int rate, burst, daily;
  };
  static Ask ask(QuotaWaiter* waiter, const std::string& instance, const KeyEntry& key);

  explicit Quotas(RedisLink link);
  void take(Ask ask) { queue_.push(std::move(ask)); }

 private:
  void run();

  Scripts scripts_;
  BatchQueue<Ask> queue_;
  Warning warn_;
};

class CacheStore {
 public:
  explicit CacheStore(RedisLink link);
  void get(CacheWaiter* waiter, std::string key) { queue_.push(Job{waiter, std::move(key), "", 0}); }
  void put(std::string key, std::string value, int ttl_s) {
    queue_.push(Job{nullptr, std::move(key), std::move(value), ttl_s});
  }

 private:
  struct Job {
    CacheWaiter* waiter;  // a lookup for it; nullptr: a store
    std::string key, value;
    int ttl_s;
  };
  void run();

  RedisLink link_;
  BatchQueue<Job> queue_;
  Warning warn_;
};

}  // namespace gw
