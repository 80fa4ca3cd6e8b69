// Counting (stats.py and metrics.py are the Python twins): Prometheus (cumulative, served at
// --metrics-bind) and the Redis statistics the rollout gates and the console read, added to
// contract.KEY_VSTATS / KEY_TRAFFIC / KEY_LAST_REQUEST every contract.FLUSH_S and summed over
// every gateway process of either plane.
#pragma once

#include <hiredis/hiredis.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace gw {

// One Redis connection, (re)connected on demand (hiredis, blocking, 0.5 s timeouts).
struct RedisLink {
  std::string host;
  int port = 6379, db = 0;
  redisContext* context = nullptr;
  bool connect();
};

// "host:port/db" (db optional).
RedisLink parse_redis(const std::string& spec);

struct Histogram {
  std::vector<uint64_t> counts;
  double sum = 0;
  Histogram();
  void observe(double seconds);
};

// Per model version: n, err, ms, b0..; per (tenant, model): the same plus queued, qms, hit, miss.
struct Row {
  double n = 0, err = 0, ms = 0, queued = 0, qms = 0, hit = 0, miss = 0;
  std::vector<double> buckets;
  Row();
  void count(bool ok, double seconds);
};

class Counters {
 public:
  void answered(const std::string& tenant, const std::string& model, const std::string& status, double seconds);
  void version(const std::string& model, const std::string& version, bool ok, double seconds);
  void queued(const std::string& tenant, const std::string& model, double seconds);
  void shed(const std::string& model, int rank, const std::string& reason = "overload");
  void cache(const std::string& tenant, const std::string& model, bool hit);
  void retried(const std::string& model);
  void handed_off(const std::string& reason);

  // Adds what was counted since the last flush to Redis as of unix time `now`. False if Redis
  // could not take it (the counts are lost, never a request).
  bool flush(RedisLink& link, double now);

  void set_instance(const std::string& instance);

  // The Prometheus text exposition; in flight and limits come from admission, the snapshot's
  // state from the snapshot file (1: answering from a loaded view; when that view was written).
  std::string exposition(const std::map<std::string, std::pair<int, double>>& replicas, bool snapshot_ok,
                         uint64_t snapshot_refusals, double snapshot_written);

 private:
  std::mutex mu_;
  std::string instance_ = "appliance";
  std::map<std::tuple<std::string, std::string, std::string>, double> requests_;
  std::map<std::string, Histogram> latency_, queue_;
  std::map<std::tuple<std::string, std::string, std::string>, double> shed_;
  std::map<std::string, double> retried_, handoffs_;
  std::map<std::pair<std::string, std::string>, double> cache_;
  std::map<std::pair<std::string, std::string>, Row> traffic_, versions_;
};

}  // namespace gw
