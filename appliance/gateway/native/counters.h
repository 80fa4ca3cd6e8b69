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

// Per model version: n, err, ms, b0.. and a generative version's dtok, dsec; per (tenant, model):
// the same plus queued, qms, hit, miss and the streams' fields (contract.TRAFFIC_FIELDS).
struct Row {
  double n = 0, err = 0, ms = 0, queued = 0, qms = 0, hit = 0, miss = 0;
  double streams = 0, ttfr = 0, sresp = 0, ssec = 0, otok = 0, dtok = 0, dsec = 0;
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

  // Generative streams (server.py model_stream_infer counts the same): a request's time to first
  // token and the time between token chunks, per model and version (Prometheus).
  void ttft(const std::string& model, const std::string& version, double seconds);
  void inter_token(const std::string& model, const std::string& version, double seconds);
  // A stream answered or refused (traffic only, as the Python plane counts streams).
  void stream_answered(const std::string& tenant, const std::string& model, bool ok, double seconds);
  // A stream that ended: its tokens (Prometheus) and, when it answered at least once
  // (first_response_s >= 0), its time to first response, responses, seconds, and decoding.
  struct Stream {
    double first_response_s = -1, seconds = 0, decode_s = 0;
    long long responses = 0, output_tokens = 0, input_tokens = 0, decode_tokens = 0;
  };
  void stream_ended(const std::string& tenant, const std::string& model, const std::string& version,
                    const Stream& stream);

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
  std::map<std::pair<std::string, std::string>, Histogram> ttft_, inter_token_;  // by (model, version)
  std::map<std::tuple<std::string, std::string, std::string>, double> output_tokens_, input_tokens_;
};

}  // namespace gw
