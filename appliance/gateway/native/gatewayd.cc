// gatewayd: the gateway's native front (issue 4). It owns the public gRPC port and
// answers the hot path itself, natively: unary ModelInfer for a known API key, to a
// model with live, permitted replicas and no semantic cache. It
// authenticates (SHA-256 of the bearer key), checks the grant and the key's model
// scope, applies the residency policy (permitted nodes), takes the tenant's rate
// limit and daily quota (quota.py's Redis script), answers from the exact response
// cache (cache.py's keys) when it can, follows a rollout's traffic split,
// picks the less loaded of two
// replicas, admits through the same adaptive concurrency limits and per-model
// priority queue as the Python gateway (admission.py), drops requests whose
// deadline passes while they wait, sheds with RESOURCE_EXHAUSTED and a retry hint,
// retries once on another replica when its replica was not there (UNAVAILABLE, or NOT_FOUND
// from a Triton still reloading), and counts what it answered
// into the same Redis statistics and its own Prometheus endpoint.
//
// Everything else -- other methods, streams, unknown or expired keys, models with the
// semantic cache, models with no live replica (scale-to-zero wake-up, policy
// denials and their audit) -- is handed, bytes and metadata unchanged, to the full
// Python gateway on a loopback port, which answers it exactly as it would alone.
//
// The control-plane view arrives as a JSON file the Python gateway rewrites after
// each of its snapshot refreshes (snapshot.py: export_snapshot); gatewayd reloads it
// when it changes. Built by `make native` into var/build/gatewayd; started by
// `manage.py run_gateway --native`, never by hand.
#include <arpa/inet.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const char kService[] = "/inference.GRPCInferenceService/";
const std::string kInfer = std::string(kService) + "ModelInfer";
const double kShare[3] = {1.0, 0.85, 0.6};  // admission.py SHARE: critical, standard, batch
const char* kClassNames[3] = {"critical", "standard", "batch"};
// stats.py BUCKETS_MS and metrics.py LATENCY_BUCKETS: the same bounds the Python gateway uses.
const std::vector<double> kStatsBucketsMs = {0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50,
                                             75,  100, 150, 200, 300, 500, 1000, 2000, 5000, 10000};
const std::vector<double> kLatencyBuckets = {0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
                                             0.05,   0.075, 0.1,   0.25,  0.5,   1,      2.5,  5,    10};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
double monotonic_now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------------
// The control-plane view (snapshot.py: export_snapshot).
struct Route {
  std::string node, address, version, tenant;  // tenant: "" unless a slice is dedicated to one
};

struct KeyEntry {
  std::string tenant_id, slug;
  double expires_at = 0;  // unix time, 0: never
  bool any_model = true;
  std::unordered_set<std::string> models;
  int rank = 1;
  int triton_priority = 2;
  int rate = 0, burst = 0, daily = 0;  // quota.py: requests a second, bucket size, a UTC day (0: none)
};

struct Config {
  std::string instance = "appliance";
  std::string quota_prefix, quota_script;  // quota.py's keys and its Lua script, the one source
  std::string cache_prefix;                // cache.py's keys
  int cache_ttl_s = 300;
  int queue_max = 256;
  double queue_wait_s = 2.0, initial_limit = 16, max_limit = 512, default_timeout_s = 60;
  double refresh_s = 1.0;  // how often the Python gateway rewrites the snapshot
  double eject_s = 1.0;    // how long routing passes over a replica that was not there
};

struct Snapshot {
  Config config;
  std::unordered_map<std::string, KeyEntry> keys;
  std::unordered_map<std::string, std::unordered_set<std::string>> grants, permitted;
  std::unordered_map<std::string, std::vector<Route>> routes;
  std::unordered_map<std::string, std::map<std::string, int>> weights;
  std::unordered_map<std::string, int> priority_levels;
  std::unordered_set<std::string> cached_models, semantic_models, cache_tenants, low_headroom;
};

std::unordered_set<std::string> string_set(const json& value) {
  std::unordered_set<std::string> out;
  if (value.is_array())
    for (const auto& item : value) out.insert(item.get<std::string>());
  return out;
}

std::shared_ptr<const Snapshot> parse_snapshot(const json& doc) {
  auto s = std::make_shared<Snapshot>();
  const auto& c = doc.at("config");
  s->config.instance = c.at("instance").get<std::string>();
  s->config.quota_prefix = c.at("quota_prefix").get<std::string>();
  s->config.quota_script = c.at("quota_script").get<std::string>();
  s->config.cache_prefix = c.at("cache_prefix").get<std::string>();
  s->config.cache_ttl_s = c.at("cache_ttl_s").get<int>();
  s->config.queue_max = c.at("queue_max").get<int>();
  s->config.queue_wait_s = c.at("queue_wait_s").get<double>();
  s->config.initial_limit = c.at("initial_limit").get<double>();
  s->config.max_limit = c.at("max_limit").get<double>();
  s->config.default_timeout_s = c.at("default_timeout_s").get<double>();
  s->config.refresh_s = c.at("refresh_s").get<double>();
  s->config.eject_s = c.at("eject_s").get<double>();
  for (const auto& [hash, k] : doc.at("keys").items()) {
    KeyEntry e;
    e.tenant_id = k.at("tenant_id").get<std::string>();
    e.slug = k.at("tenant").get<std::string>();
    e.expires_at = k.at("expires_at").is_null() ? 0 : k.at("expires_at").get<double>();
    e.any_model = k.at("models").is_null();
    e.models = string_set(k.at("models"));
    e.rank = std::clamp(k.at("rank").get<int>(), 0, 2);
    e.triton_priority = k.at("triton_priority").get<int>();
    e.rate = k.at("rate").get<int>();
    e.burst = k.at("burst").get<int>();
    e.daily = k.at("daily").get<int>();
    s->keys.emplace(hash, std::move(e));
  }
  for (const auto& [tenant, models] : doc.at("grants").items()) s->grants[tenant] = string_set(models);
  for (const auto& [tenant, nodes] : doc.at("permitted").items()) s->permitted[tenant] = string_set(nodes);
  for (const auto& [model, list] : doc.at("routes").items())
    for (const auto& r : list)
      s->routes[model].push_back(Route{r.at("node").get<std::string>(), r.at("address").get<std::string>(),
                                       r.at("version").get<std::string>(),
                                       r.at("tenant").is_null() ? "" : r.at("tenant").get<std::string>()});
  for (const auto& [model, split] : doc.at("weights").items())
    for (const auto& [version, percent] : split.items()) s->weights[model][version] = percent.get<int>();
  for (const auto& [model, levels] : doc.at("priority_levels").items()) s->priority_levels[model] = levels.get<int>();
  s->cached_models = string_set(doc.at("cached_models"));
  s->semantic_models = string_set(doc.at("semantic_models"));
  s->cache_tenants = string_set(doc.at("cache_tenants"));
  s->low_headroom = string_set(doc.at("low_headroom"));
  return s;
}

class SnapshotFile {
 public:
  explicit SnapshotFile(std::string path) : path_(std::move(path)) {}

  std::shared_ptr<const Snapshot> current() const { return std::atomic_load(&snapshot_); }

  // The Python gateway rewrites the file after every refresh; a file that stopped changing
  // means it is gone or stuck, and a revoked key must not live on here: the front then
  // answers nothing itself.
  bool stale(const Snapshot& s) const {
    double age = unix_now() - written_.load();
    return age > std::max(5.0, 5 * s.config.refresh_s);
  }

  // Reloads when the file's modification time or size changed; a bad file keeps the old view.
  void poll() {
    struct stat st {};
    if (stat(path_.c_str(), &st) != 0) return;
    auto stamp = std::make_pair(static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec,
                                static_cast<long long>(st.st_size));
    written_ = st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9;
    if (stamp == stamp_) return;
    try {
      std::ifstream in(path_);
      auto next = parse_snapshot(json::parse(in));
      std::atomic_store(&snapshot_, next);
      stamp_ = stamp;
    } catch (const std::exception& exc) {
      std::cerr << "gatewayd: snapshot " << path_ << " not loaded (" << exc.what() << "); keeping the previous one"
                << std::endl;
    }
  }

 private:
  std::string path_;
  std::pair<long long, long long> stamp_{-1, -1};
  std::atomic<double> written_{0};
  std::shared_ptr<const Snapshot> snapshot_;
};

// ---------------------------------------------------------------------------------------------
// The few protobuf details of ModelInferRequest the front needs (wire.py is the Python twin):
// fields 1 (model_name) and 2 (model_version), and appending fields without re-serialising.
bool read_varint(const uint8_t*& p, const uint8_t* end, uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    uint8_t byte = *p++;
    out |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// Scans the top level of the message. False if it is not well-formed protobuf. `content`,
// when asked for, gets the message without its version and id (fields 2 and 3): what the
// exact cache's key hashes (cache.py clears the same two fields).
bool model_of(const std::string& raw, std::string& name, std::string& version, std::string* id = nullptr,
              std::string* content = nullptr) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(raw.data());
  const uint8_t* end = p + raw.size();
  while (p < end) {
    const uint8_t* field_start = p;
    uint64_t tag, value;
    if (!read_varint(p, end, tag)) return false;
    uint32_t field = tag >> 3, wire = tag & 7;
    if (field == 0) return false;
    switch (wire) {
      case 0:
        if (!read_varint(p, end, value)) return false;
        break;
      case 1:
        if (end - p < 8) return false;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return false;
        p += 4;
        break;
      case 2: {
        if (!read_varint(p, end, value) || value > static_cast<uint64_t>(end - p)) return false;
        if (field == 1) name.assign(reinterpret_cast<const char*>(p), value);
        if (field == 2) version.assign(reinterpret_cast<const char*>(p), value);
        if (field == 3 && id) id->assign(reinterpret_cast<const char*>(p), value);
        p += value;
        break;
      }
      default:
        return false;
    }
    if (content && field != 2 && field != 3) content->append(reinterpret_cast<const char*>(field_start), p - field_start);
  }
  return true;
}

void put_varint(std::string& out, uint64_t n) {
  do {
    uint8_t byte = n & 0x7F;
    n >>= 7;
    out.push_back(static_cast<char>(n ? byte | 0x80 : byte));
  } while (n);
}

void put_bytes_field(std::string& out, uint32_t field, const std::string& payload) {
  put_varint(out, field << 3 | 2);
  put_varint(out, payload.size());
  out += payload;
}

// ModelInferRequest.parameters["priority"] = InferParameter{uint64_param: level} (field 4, a map).
void put_priority(std::string& out, int level) {
  std::string value;
  put_varint(value, 5 << 3 | 0);
  put_varint(value, level);
  std::string entry;
  put_bytes_field(entry, 1, "priority");
  put_bytes_field(entry, 2, value);
  put_bytes_field(out, 4, entry);
}

std::string sha256_hex(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static const char hex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '0');
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 15];
  }
  return out;
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

// ---------------------------------------------------------------------------------------------
// Counting: Prometheus (cumulative, served at --metrics-bind) and the Redis statistics the
// rollout gates and the console read (stats.py: flushed every 0.25 s, summed over processes).
// One Redis connection, (re)connected on demand (hiredis, blocking, 0.5 s timeouts).
struct RedisLink {
  std::string host;
  int port = 6379, db = 0;
  redisContext* context = nullptr;

  bool connect() {
    if (context != nullptr && !context->err) return true;
    if (context != nullptr) redisFree(context);
    struct timeval timeout {0, 500000};
    context = redisConnectWithTimeout(host.c_str(), port, timeout);
    if (context == nullptr || context->err) return false;
    redisSetTimeout(context, timeout);
    if (db) freeReplyObject(redisCommand(context, "SELECT %d", db));
    return !context->err;
  }
};

struct Histogram {
  std::vector<uint64_t> counts = std::vector<uint64_t>(kLatencyBuckets.size() + 1, 0);
  double sum = 0;
  void observe(double seconds) {
    counts[std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds) - kLatencyBuckets.begin()]++;
    sum += seconds;
  }
};

struct Row {  // stats.py: per-version n, err, ms, b0..b21; per (tenant, model) the same plus queued, qms, hit, miss
  double n = 0, err = 0, ms = 0, queued = 0, qms = 0, hit = 0, miss = 0;
  std::vector<double> buckets = std::vector<double>(kStatsBucketsMs.size() + 1, 0);
  void count(bool ok, double seconds) {
    double ms_ = seconds * 1000.0;
    n += 1;
    if (!ok) err += 1;
    ms += ms_;
    buckets[std::lower_bound(kStatsBucketsMs.begin(), kStatsBucketsMs.end(), ms_) - kStatsBucketsMs.begin()] += 1;
  }
};

std::string label_escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

class Counters {
 public:
  void answered(const std::string& tenant, const std::string& model, const std::string& status, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    requests_[{tenant, model, status}] += 1;
    latency_[model].observe(seconds);
    traffic_[{tenant, model}].count(status == "OK", seconds);
  }
  void version(const std::string& model, const std::string& version, bool ok, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    versions_[{model, version}].count(ok, seconds);
  }
  void queued(const std::string& tenant, const std::string& model, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_[model].observe(seconds);
    auto& row = traffic_[{tenant, model}];
    row.queued += 1;
    row.qms += seconds * 1000.0;
  }
  void shed(const std::string& model, int rank, const std::string& reason = "overload") {
    std::lock_guard<std::mutex> lock(mu_);
    shed_[{model, kClassNames[rank], reason}] += 1;
  }
  void cache(const std::string& tenant, const std::string& model, bool hit) {
    std::lock_guard<std::mutex> lock(mu_);
    cache_[{model, hit ? "hit" : "miss"}] += 1;
    auto& row = traffic_[{tenant, model}];
    (hit ? row.hit : row.miss) += 1;
  }
  void retried(const std::string& model) {
    std::lock_guard<std::mutex> lock(mu_);
    retried_[model] += 1;
  }
  void handed_off(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    handoffs_[reason] += 1;
  }

  // Adds what was counted since the last flush to Redis (stats.py's keys and fields).
  void flush(RedisLink& link) {
    std::map<std::pair<std::string, std::string>, Row> traffic, versions;
    {
      std::lock_guard<std::mutex> lock(mu_);
      traffic.swap(traffic_);
      versions.swap(versions_);
    }
    if (traffic.empty() && versions.empty()) return;
    if (!link.connect()) {
      std::cerr << "gatewayd: request statistics not stored (Redis unreachable)" << std::endl;
      return;
    }
    redisContext* redis = link.context;
    double now = unix_now();
    long second = static_cast<long>(now);
    int pending = 0;
    auto add = [&](const std::vector<std::string>& args) {
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      redisAppendCommandArgv(redis, static_cast<int>(argv.size()), argv.data(), lens.data());
      ++pending;
    };
    auto num = [](double v) {
      std::ostringstream out;
      out.precision(17);
      out << v;
      return out.str();
    };
    std::string minute_key = instance_ + ":traffic:" + std::to_string(second / 60 * 60);
    for (const auto& [labels, row] : traffic) {
      std::string prefix = labels.first + "|" + labels.second + "|";
      std::vector<std::pair<std::string, double>> fields = {
          {"n", row.n},       {"err", row.err}, {"ms", row.ms},    {"queued", row.queued},
          {"qms", row.qms},   {"hit", row.hit}, {"miss", row.miss}};
      for (size_t i = 0; i < row.buckets.size(); ++i) fields.push_back({"b" + std::to_string(i), row.buckets[i]});
      for (const auto& [name, value] : fields)
        if (value != 0) add({"HINCRBYFLOAT", minute_key, prefix + name, num(value)});
    }
    if (!traffic.empty()) add({"EXPIRE", minute_key, std::to_string(3600 * 3)});
    for (const auto& [labels, row] : versions) {
      std::string key = instance_ + ":vstats:" + labels.first + ":" + labels.second + ":" + std::to_string(second);
      add({"HINCRBY", key, "n", std::to_string(static_cast<long>(row.n))});
      if (row.err) add({"HINCRBY", key, "err", std::to_string(static_cast<long>(row.err))});
      add({"HINCRBYFLOAT", key, "ms", num(row.ms)});
      for (size_t i = 0; i < row.buckets.size(); ++i)
        if (row.buckets[i]) add({"HINCRBY", key, "b" + std::to_string(i), std::to_string(static_cast<long>(row.buckets[i]))});
      add({"EXPIRE", key, "3600"});
      add({"SET", instance_ + ":last-request:" + labels.first, num(now), "EX", std::to_string(7 * 86400)});
    }
    for (int i = 0; i < pending; ++i) {
      void* reply = nullptr;
      if (redisGetReply(redis, &reply) != REDIS_OK) {
        std::cerr << "gatewayd: request statistics not stored (Redis error)" << std::endl;
        return;  // the context is marked failed and reconnects next time
      }
      freeReplyObject(reply);
    }
  }

  void set_instance(const std::string& instance) {
    std::lock_guard<std::mutex> lock(mu_);
    instance_ = instance;
  }

  // The Prometheus text exposition; inflight and limits come from admission.
  std::string exposition(const std::map<std::string, std::pair<int, double>>& replicas) {
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream out;
    out.precision(17);
    const std::string plane = "plane=\"native\"";
    out << "# HELP gateway_requests_total Inference requests answered, by tenant, model and gRPC status\n"
        << "# TYPE gateway_requests_total counter\n";
    for (const auto& [l, v] : requests_)
      out << "gateway_requests_total{" << plane << ",tenant=\"" << label_escape(std::get<0>(l)) << "\",model=\""
          << label_escape(std::get<1>(l)) << "\",status=\"" << std::get<2>(l) << "\"} " << v << "\n";
    histogram(out, "gateway_request_seconds", "Time from arrival to answer of inference requests", latency_);
    histogram(out, "gateway_queue_seconds", "Time a request waited in the gateway for a replica slot", queue_);
    out << "# HELP gateway_inflight Requests sent to a replica and not yet answered\n# TYPE gateway_inflight gauge\n";
    for (const auto& [address, v] : replicas)
      out << "gateway_inflight{" << plane << ",replica=\"" << label_escape(address) << "\"} " << v.first << "\n";
    out << "# HELP gateway_concurrency_limit A replica's adaptive concurrency limit\n"
        << "# TYPE gateway_concurrency_limit gauge\n";
    for (const auto& [address, v] : replicas)
      out << "gateway_concurrency_limit{" << plane << ",replica=\"" << label_escape(address) << "\"} " << v.second
          << "\n";
    out << "# HELP gateway_shed_total Requests refused with RESOURCE_EXHAUSTED (overload or quota)\n"
        << "# TYPE gateway_shed_total counter\n";
    for (const auto& [l, v] : shed_)
      out << "gateway_shed_total{" << plane << ",model=\"" << label_escape(std::get<0>(l)) << "\",priority=\""
          << std::get<1>(l) << "\",reason=\"" << std::get<2>(l) << "\"} " << v << "\n";
    out << "# HELP gateway_retried_total Requests retried after their replica was not there (UNAVAILABLE, or NOT_FOUND from a Triton without the model)\n"
        << "# TYPE gateway_retried_total counter\n";
    for (const auto& [model, v] : retried_)
      out << "gateway_retried_total{" << plane << ",model=\"" << label_escape(model) << "\"} " << v << "\n";
    out << "# HELP gateway_cache_lookups_total Response-cache lookups\n# TYPE gateway_cache_lookups_total counter\n";
    for (const auto& [l, v] : cache_)
      out << "gateway_cache_lookups_total{" << plane << ",model=\"" << label_escape(l.first) << "\",result=\""
          << l.second << "\"} " << v << "\n";
    out << "# HELP gateway_native_handoffs_total Requests handed to the full (Python) gateway, by reason\n"
        << "# TYPE gateway_native_handoffs_total counter\n";
    for (const auto& [reason, v] : handoffs_)
      out << "gateway_native_handoffs_total{reason=\"" << reason << "\"} " << v << "\n";
    return out.str();
  }

 private:
  static void histogram(std::ostringstream& out, const std::string& name, const std::string& help,
                        const std::map<std::string, Histogram>& series) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    for (const auto& [model, h] : series) {
      std::string labels = "plane=\"native\",model=\"" + label_escape(model) + "\"";
      uint64_t seen = 0;
      for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
        seen += h.counts[i];
        std::ostringstream le;  // shortest form, as prometheus_client writes it: 0.0005, 2.5
        le << kLatencyBuckets[i];
        out << name << "_bucket{" << labels << ",le=\"" << le.str() << "\"} " << seen << "\n";
      }
      seen += h.counts.back();
      out << name << "_bucket{" << labels << ",le=\"+Inf\"} " << seen << "\n";
      out << name << "_count{" << labels << "} " << seen << "\n" << name << "_sum{" << labels << "} " << h.sum << "\n";
    }
  }

  std::mutex mu_;
  std::string instance_ = "appliance";
  std::map<std::tuple<std::string, std::string, std::string>, double> requests_;
  std::map<std::string, Histogram> latency_, queue_;
  std::map<std::tuple<std::string, std::string, std::string>, double> shed_;
  std::map<std::string, double> retried_, handoffs_;
  std::map<std::pair<std::string, std::string>, double> cache_;
  std::map<std::pair<std::string, std::string>, Row> traffic_, versions_;
};

// ---------------------------------------------------------------------------------------------
// Admission: admission.py's Limiter (a latency gradient) and per-model priority queue.
struct Limiter {
  double limit = 16, minimum = 2, maximum = 512, tolerance = 2, slack = 0.002, smoothing = 0.05, drift_s = 60;
  int inflight = 0;
  double baseline = -1, latency = -1, sampled = -1;
  double down_until = 0;  // monotonic_now() seconds: passed over until then (admission.py)

  int capacity(int rank) const { return std::max(1, static_cast<int>(limit * kShare[rank])); }
  double cost() const { return (inflight + 1) * (baseline > 0 ? baseline : 0.001); }

  void done(double seconds, bool overloaded, bool may_grow, double now) {
    if (baseline < 0 || seconds < baseline) {
      baseline = seconds;
    } else if (sampled >= 0) {
      baseline += (seconds - baseline) * std::min(1.0, std::max(0.0, now - sampled) / drift_s);
    }
    sampled = now;
    latency = latency < 0 ? seconds : latency + (seconds - latency) * 0.1;
    double target;
    if (overloaded) {
      target = limit * 0.5;
    } else {
      double gradient = std::max(0.5, std::min(1.0, (tolerance * baseline + slack) / latency));
      bool used = inflight + 1 >= limit * 0.5;
      target = limit * gradient + (used && may_grow ? std::sqrt(limit) : 0.0);
      if (!may_grow) target = std::min(target, limit);
    }
    limit = std::min(maximum, std::max(minimum, limit * (1 - smoothing) + target * smoothing));
  }
};

class Call;

struct Waiter {
  int rank;
  uint64_t seq;
  Call* call;
  bool operator<(const Waiter& other) const {
    return rank != other.rank ? rank < other.rank : seq < other.seq;
  }
};

// ---------------------------------------------------------------------------------------------
// Per-tenant rate limits and daily quotas: quota.py's Redis script (sent in the snapshot, so
// both gateways run the very same one against the same keys), for every request of a limited
// tenant. One thread pipelines whatever requests are waiting into one round trip. Redis
// unreachable: served (fail open), as quota.py does.
struct Verdict {
  bool allowed = true;
  long long retry_after_ms = 0;
  int reason = 0;  // 1 rate, 2 quota
};

// Work for one Redis thread: callers push, the thread takes everything waiting at once
// (one pipelined round trip for all of it). Quotas and the response cache use it.
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
  void operator()(const char* message) {
    if (Clock::now() - last < std::chrono::seconds(10)) return;
    last = Clock::now();
    std::cerr << "gatewayd: " << message << std::endl;
  }
};

class Quotas {
 public:
  struct Ask {
    Call* call;
    std::string bucket, day, script;
    int rate, burst, daily;
  };

  Quotas(std::string host, int port, int db) : link_{std::move(host), port, db} {
    std::thread([this] { run(); }).detach();
  }

  void take(Ask ask) { queue_.push(std::move(ask)); }

 private:
  void run();

  RedisLink link_;
  BatchQueue<Ask> queue_;
  Warning warn_;
  std::string loaded_;  // the script text whose SHA-1 Redis knows
  std::string sha_;
};

// The exact response cache (cache.py's keys and TTL): lookups for the calls that wait on
// them and fire-and-forget stores, pipelined from one thread. Redis trouble is a miss.
class CacheStore {
 public:
  CacheStore(std::string host, int port, int db) : link_{std::move(host), port, db} {
    std::thread([this] { run(); }).detach();
  }
  void get(Call* call, std::string key) { queue_.push(Job{call, std::move(key), "", 0}); }
  void put(std::string key, std::string value, int ttl_s) {
    queue_.push(Job{nullptr, std::move(key), std::move(value), ttl_s});
  }

 private:
  struct Job {
    Call* call;  // a lookup for this call; nullptr: a store
    std::string key, value;
    int ttl_s;
  };
  void run();

  RedisLink link_;
  BatchQueue<Job> queue_;
  Warning warn_;
};

class Front;

// One call on the public port: served natively (unary ModelInfer on the hot path) or bridged,
// message for message, to the full gateway.
class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(Front* front, grpc::GenericCallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Admission hands a queued call its replica, or evicts it for a higher class (both under
  // the admission lock: they record and take a reference); wake() then ends the wait.
  void granted(const Route& route);
  void evicted(int retry_after_ms);
  void wake();
  // The tenant's rate limit and quota decided (on the quota thread).
  void quota_done(const Verdict& verdict);
  // The exact cache answered a lookup (on the cache thread): found, and the cached answer.
  void cache_done(bool found, std::string answer);

 private:
  friend class Front;
  enum class Mode { kReading, kNative, kBridge };
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
  void release_reference();
  void release_hold(bool cancel);

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

  // Bridge.
  std::unique_ptr<Upstream> upstream_;
  grpc::ClientContext bridge_context_;
  grpc::ByteBuffer in_, out_;
  bool client_done_ = false;

  std::mutex mu_;
  int references_ = 1;  // the server reactor; +1 while an upstream bridge call is alive
};

class Front final : public grpc::CallbackGenericService {
 public:
  Front(const std::string& full_address, SnapshotFile* snapshots, Counters* counters)
      : snapshots_(snapshots), counters_(counters) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
    args.SetMaxSendMessageSize(256 * 1024 * 1024);
    full_ = std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(full_address, grpc::InsecureChannelCredentials(), args));
  }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    return new Call(this, context);
  }

  grpc::GenericStub* full() { return full_.get(); }
  Quotas* quotas() { return quotas_.get(); }
  CacheStore* cache() { return cache_.get(); }
  void set_stores(std::unique_ptr<Quotas> quotas, std::unique_ptr<CacheStore> cache) {
    quotas_ = std::move(quotas);
    cache_ = std::move(cache);
  }
  SnapshotFile* snapshots() { return snapshots_; }
  Counters* counters() { return counters_; }

  grpc::GenericStub* replica(const std::string& address) {
    std::lock_guard<std::mutex> lock(stubs_mu_);
    auto& stub = stubs_[address];
    if (!stub) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
      args.SetMaxSendMessageSize(256 * 1024 * 1024);
      stub = std::make_unique<grpc::GenericStub>(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    }
    return stub.get();
  }

  // --- admission (admission.py) --------------------------------------------------------------
  Limiter& limiter(const Snapshot& s, const std::string& address, const std::string& model) {
    auto it = limiters_.find({address, model});
    if (it == limiters_.end()) {
      Limiter l;
      l.maximum = s.config.max_limit;
      l.limit = std::min(s.config.initial_limit, s.config.max_limit);
      it = limiters_.emplace(std::make_pair(address, model), l).first;
    }
    return it->second;
  }

  // The less loaded of two random routes with room for this class (none: nullptr); ejected
  // replicas passed over while any other one is up (admission.py _free). Lock held.
  const Route* free_route(const Snapshot& s, const std::string& model, const std::vector<Route>& routes, int rank,
                          const std::string& exclude) {
    double now = monotonic_now();
    bool any_up = false;
    for (const auto& r : routes)
      if (r.address != exclude && limiter(s, r.address, model).down_until <= now) any_up = true;
    std::vector<const Route*> room;
    for (const auto& r : routes) {
      if (r.address == exclude) continue;
      Limiter& l = limiter(s, r.address, model);
      if (any_up && l.down_until > now) continue;
      if (l.inflight < l.capacity(rank)) room.push_back(&r);
    }
    if (room.empty()) return nullptr;
    if (room.size() == 1) return room[0];
    std::uniform_int_distribution<size_t> pick(0, room.size() - 1);
    size_t a = pick(rng_), b = pick(rng_);
    while (b == a) b = pick(rng_);
    return limiter(s, room[a]->address, model).cost() <= limiter(s, room[b]->address, model).cost() ? room[a] : room[b];
  }

  enum class Admit { kNow, kQueued, kShed };

  Admit acquire(Call* call, const Snapshot& s, const std::string& model, const std::vector<Route>& routes, int rank,
                Route& out, int& retry_after_ms) {
    std::vector<Call*> evicted;
    Admit result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const Route* r = free_route(s, model, routes, rank, "");
      if (r != nullptr) {
        limiter(s, r->address, model).inflight++;
        out = *r;
        return Admit::kNow;
      }
      auto& queue = queues_[model];
      retry_after_ms = hint(s, model, routes);
      if (static_cast<int>(queue.size()) >= s.config.queue_max) {
        if (queue.empty()) return Admit::kShed;  // GATEWAY_QUEUE_MAX=0: no queue at all
        auto worst = std::prev(queue.end());        // lowest class, newest arrival
        if (worst->rank <= rank) return Admit::kShed;
        worst->call->evicted(retry_after_ms);
        evicted.push_back(worst->call);
        queue.erase(worst);
      }
      call->queue_seq_ = seq_++;
      queue.insert(Waiter{rank, call->queue_seq_, call});
      result = Admit::kQueued;
    }
    for (Call* c : evicted) c->wake();
    return result;
  }

  // Frees a slot, teaches the limiter, and hands free slots to the best waiters.
  void release(const Snapshot& s, const std::string& model, const Route& route, double seconds, bool overloaded,
               bool sample) {
    std::vector<Call*> granted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Limiter& l = limiter(s, route.address, model);
      l.inflight--;
      if (sample)
        l.done(seconds, overloaded, s.low_headroom.count(route.node) == 0,
               monotonic_now());
      auto it = queues_.find(model);
      while (it != queues_.end() && !it->second.empty()) {
        auto best = it->second.begin();
        const Route* r = free_route(*best->call->snapshot_, model, best->call->first_, best->rank, "");
        if (r == nullptr) break;  // the best waiter cannot go; a lower class never overtakes it
        limiter(s, r->address, model).inflight++;
        best->call->granted(*r);
        granted.push_back(best->call);
        it->second.erase(best);
      }
    }
    for (Call* c : granted) c->wake();
  }

  // The retry: a slot on another replica with room for this class, if there is one; the one
  // that failed is passed over for eject_s.
  const Route* acquire_other(const Snapshot& s, const std::string& model, const std::vector<Route>& routes,
                             const std::string& failed, int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    limiter(s, failed, model).down_until = monotonic_now() + s.config.eject_s;
    const Route* r = free_route(s, model, routes, rank, failed);
    if (r != nullptr) limiter(s, r->address, model).inflight++;
    return r;
  }

  // Leaves the queue (deadline, queue wait, cancellation). True if the call was still waiting.
  bool forget(Call* call, const std::string& model, int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queues_.find(model);
    if (it == queues_.end()) return false;
    return it->second.erase(Waiter{rank, call->queue_seq_, call}) > 0;
  }

  std::map<std::string, std::pair<int, double>> replicas() {
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, std::pair<int, double>> out;
    for (const auto& [key, l] : limiters_) {
      auto& v = out[key.first];
      v.first += l.inflight;
      v.second += l.limit;
    }
    return out;
  }

 private:
  int hint(const Snapshot& s, const std::string& model, const std::vector<Route>& routes) {
    double best = 0.01;
    bool any = false;
    for (const auto& r : routes) {
      double b = limiter(s, r.address, model).baseline;
      b = b > 0 ? b : 0.01;
      best = any ? std::min(best, b) : b;
      any = true;
    }
    return std::max(10, static_cast<int>(best * 1000 * 4));
  }

  SnapshotFile* snapshots_;
  Counters* counters_;
  std::unique_ptr<grpc::GenericStub> full_;
  std::unique_ptr<Quotas> quotas_;
  std::unique_ptr<CacheStore> cache_;
  std::mutex stubs_mu_;
  std::unordered_map<std::string, std::unique_ptr<grpc::GenericStub>> stubs_;
  std::mutex mu_;
  std::map<std::pair<std::string, std::string>, Limiter> limiters_;
  std::unordered_map<std::string, std::set<Waiter>> queues_;
  uint64_t seq_ = 1;
  std::mt19937_64 rng_{std::random_device{}()};
};

void Quotas::run() {
  for (;;) {
    std::vector<Ask> batch = queue_.take();
    std::vector<Verdict> verdicts(batch.size());
    bool stored = false;
    for (int attempt = 0; attempt < 2 && !stored; ++attempt) {
      redisContext* before = link_.context;
      if (!link_.connect()) break;
      if (link_.context != before) loaded_.clear();  // a new connection may face a restarted Redis
      redisContext* redis_ = link_.context;
      if (loaded_ != batch[0].script) {  // SCRIPT LOAD answers the SHA-1 EVALSHA needs
        redisReply* reply = static_cast<redisReply*>(redisCommand(redis_, "SCRIPT LOAD %b", batch[0].script.data(),
                                                                  batch[0].script.size()));
        if (reply == nullptr || reply->type != REDIS_REPLY_STRING) {
          if (reply) freeReplyObject(reply);
          break;
        }
        sha_.assign(reply->str, reply->len);
        loaded_ = batch[0].script;
        freeReplyObject(reply);
      }
      for (const auto& ask : batch) {
        std::string rate = std::to_string(ask.rate), burst = std::to_string(ask.burst), daily = std::to_string(ask.daily);
        const char* argv[] = {"EVALSHA", sha_.c_str(), "2", ask.bucket.c_str(), ask.day.c_str(),
                              rate.c_str(), burst.c_str(), daily.c_str()};
        redisAppendCommandArgv(redis_, 8, argv, nullptr);
      }
      bool noscript = false, failed = false;
      for (size_t i = 0; i < batch.size(); ++i) {
        void* raw = nullptr;
        if (redisGetReply(redis_, &raw) != REDIS_OK) {
          failed = true;
          break;
        }
        auto* reply = static_cast<redisReply*>(raw);
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
          verdicts[i].allowed = reply->element[0]->integer == 1;
          verdicts[i].retry_after_ms = reply->element[1]->integer;
          verdicts[i].reason = static_cast<int>(reply->element[2]->integer);
        } else if (reply->type == REDIS_REPLY_ERROR && std::string(reply->str, reply->len).rfind("NOSCRIPT", 0) == 0) {
          noscript = true;
        }
        freeReplyObject(reply);
      }
      if (failed) break;
      if (noscript) {
        loaded_.clear();  // Redis was restarted or flushed its scripts: load again, ask again
        verdicts.assign(batch.size(), Verdict{});
        continue;
      }
      stored = true;
    }
    if (!stored) {
      verdicts.assign(batch.size(), Verdict{});  // fail open
      warn_("quota store unavailable; serving without limits");
    }
    for (size_t i = 0; i < batch.size(); ++i) batch[i].call->quota_done(verdicts[i]);
  }
}

void CacheStore::run() {
  for (;;) {
    std::vector<Job> batch = queue_.take();
    std::vector<std::pair<bool, std::string>> found(batch.size());
    bool ok = link_.connect();
    if (ok) {
      for (const auto& job : batch) {
        if (job.call != nullptr) {
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
        if (batch[i].call != nullptr && reply->type == REDIS_REPLY_STRING)
          found[i] = {true, std::string(reply->str, reply->len)};
        freeReplyObject(reply);
      }
    }
    if (!ok) {
      for (auto& f : found) f = {false, ""};  // a miss, never a failed request
      warn_("response cache unavailable; serving from Triton");
    }
    for (size_t i = 0; i < batch.size(); ++i)
      if (batch[i].call != nullptr) batch[i].call->cache_done(found[i].first, std::move(found[i].second));
  }
}

Call::Call(Front* front, grpc::GenericCallbackServerContext* context) : front_(front), context_(context) {
  if (context_->method() == kInfer) {
    StartRead(&request_);
  } else {
    front_->counters()->handed_off("method");
    start_bridge(false);
  }
}

void Call::OnReadDone(bool ok) {
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
  if (!ok) {
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
    return;
  }
  decide();
}

// The hot path's checks; anything it cannot answer alone goes to the full gateway.
void Call::decide() {
  snapshot_ = front_->snapshots()->current();
  if (!snapshot_) return handoff("no snapshot yet");
  const Snapshot& s = *snapshot_;
  if (front_->snapshots()->stale(s)) return handoff("stale snapshot");
  std::string token;
  auto auth = context_->client_metadata().find("authorization");
  if (auth == context_->client_metadata().end()) return handoff("no key");
  std::string header(auth->second.data(), auth->second.size());
  auto space = header.find(' ');
  if (space == std::string::npos) return handoff("no key");
  std::string scheme = header.substr(0, space);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), ::tolower);
  if (scheme != "bearer") return handoff("no key");
  token = header.substr(space + 1);
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
  // A model with both caches uses the exact one (as the Python gateway does); the semantic
  // cache (embedding, nearest neighbours, word guard) is the Python gateway's.
  cached_ = s.cached_models.count(model_) && s.cache_tenants.count(key_->tenant_id);
  if (!cached_ && s.semantic_models.count(model_) && s.cache_tenants.count(key_->tenant_id))
    return handoff("semantic cache");
  auto all = s.routes.find(model_);
  if (all == s.routes.end()) return handoff("no replica");
  // Slices dedicated to a tenant serve that tenant only (snapshot.py: for_tenant), then residency.
  auto permitted = s.permitted.find(key_->tenant_id);
  bool own = false;
  for (const auto& r : all->second)
    if (r.tenant == key_->tenant_id && (version_.empty() || r.version == version_)) own = true;
  for (const auto& r : all->second) {
    if (!version_.empty() && r.version != version_) continue;
    if (own ? r.tenant != key_->tenant_id : !r.tenant.empty()) continue;
    if (permitted == s.permitted.end() || !permitted->second.count(r.node)) continue;
    routes_.push_back(r);
  }
  if (routes_.empty()) return handoff("no permitted replica");
  // A rollout's traffic split, unless the client pinned a version.
  first_ = routes_;
  if (version_.empty()) {
    std::vector<std::string> versions;
    for (const auto& r : routes_)
      if (std::find(versions.begin(), versions.end(), r.version) == versions.end()) versions.push_back(r.version);
    if (versions.size() > 1) {
      std::sort(versions.begin(), versions.end());
      std::vector<int> weights;
      int total = 0;
      auto split = s.weights.find(model_);
      for (const auto& v : versions) {
        int w = 0;
        if (split != s.weights.end()) {
          auto it = split->second.find(v);
          if (it != split->second.end()) w = it->second;
        }
        weights.push_back(w);
        total += w;
      }
      thread_local std::mt19937 rng{std::random_device{}()};
      std::string chosen;
      if (total > 0) {
        std::discrete_distribution<int> draw(weights.begin(), weights.end());
        chosen = versions[draw(rng)];
      } else {
        chosen = versions[std::uniform_int_distribution<size_t>(0, versions.size() - 1)(rng)];
      }
      first_.clear();
      for (const auto& r : routes_)
        if (r.version == chosen) first_.push_back(r);
    }
  }
  mode_ = Mode::kNative;
  if (key_->rate > 0 || key_->daily > 0) {
    const auto& tenant = key_->tenant_id;
    front_->quotas()->take(Quotas::Ask{this, s.config.quota_prefix + ":bucket:" + tenant,
                                       s.config.quota_prefix + ":day:" + tenant + ":", s.config.quota_script,
                                       key_->rate, key_->burst ? key_->burst : key_->rate, key_->daily});
    return;  // quota_done continues
  }
  proceed();
}

// The exact cache (cache.py): looked up under the version that would answer, after the quota
// (a hit is a request too) and before admission (a hit takes no replica slot).
void Call::proceed() {
  if (!cached_) return admit();
  routes_ = first_;  // a retry stays on the version whose answer will be stored under its key
  std::string name, version, content;
  model_of(raw_, name, version, nullptr, &content);
  cache_key_ = snapshot_->config.cache_prefix + ":" + key_->tenant_id + ":" + model_ + ":" + first_[0].version + ":" +
               sha256_hex(content);
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
  bool quota = verdict.reason == 2;
  front_->counters()->shed(model_, key_->rank, quota ? "quota" : "rate");
  std::string message = quota ? "tenant '" + key_->slug + "' used its daily quota of " + std::to_string(key_->daily) +
                                    " requests"
                              : "tenant '" + key_->slug + "' is over its rate limit of " + std::to_string(key_->rate) +
                                    " requests/s; retry in " + std::to_string(verdict.retry_after_ms) + " ms";
  answer(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, message), static_cast<int>(verdict.retry_after_ms));
}

// Admission (admission.py): a replica slot now, a place in the model's queue, or shed.
void Call::admit() {
  const Snapshot& s = *snapshot_;
  int retry_after_ms = 0;
  wait_ = Wait::kWaiting;  // before the call can appear in a queue (no other thread knows it yet)
  queued_at_ = Clock::now();
  Route route;
  auto outcome = front_->acquire(this, s, model_, first_, key_->rank, route, retry_after_ms);
  if (outcome == Front::Admit::kNow) {
    wait_ = Wait::kNone;
    return admitted(route, 0.0);
  }
  if (outcome == Front::Admit::kShed) {
    wait_ = Wait::kNone;
    front_->counters()->shed(model_, key_->rank);
    return answer(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                               "model '" + model_ + "' is overloaded and its queue is full; retry later"),
                  retry_after_ms);
  }
  // Queued: wait for a slot, the queue wait limit or the client's deadline, whichever first.
  auto limit = std::chrono::system_clock::now() +
               std::chrono::duration_cast<std::chrono::system_clock::duration>(
                   std::chrono::duration<double>(s.config.queue_wait_s));
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
    if (alarm_set_) alarm_.Cancel();  // else decide() sees the new state when it sets the alarm
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
    bool left = front_->forget(this, model_, key_->rank);
    std::lock_guard<std::mutex> lock(mu_);
    state = wait_;
    if (left) wait_ = state = (fired ? Wait::kNone : Wait::kCancelled);
  }
  (void)fired;
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
      return answer(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "model '" + model_ + "' is overloaded: a " + kClassNames[key_->rank] +
                                     " request was shed for higher-priority traffic"),
                    evicted_hint_);
    case Wait::kCancelled:
      return answer(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request"));
    default:
      if (queue_expires_)
        return answer(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed while it "
                                                                         "waited for model '" + model_ +
                                                                             "'; it was not sent"));
      front_->counters()->shed(model_, key_->rank);
      {
        std::ostringstream message;
        message << "model '" << model_ << "' is overloaded: no replica slot within "
                << snapshot_->config.queue_wait_s << " s; retry later";
        return answer(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, message.str()), evicted_hint_);
      }
  }
}

void Call::admitted(const Route& route, double waited) {
  front_->counters()->queued(key_->slug, model_, waited);
  route_ = route;
  if (context_->IsCancelled()) {
    front_->release(*snapshot_, model_, route_, 0, false, false);
    return answer(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request"));
  }
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
  auto fallback = std::chrono::system_clock::now() + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                                         std::chrono::duration<double>(s.config.default_timeout_s));
  upstream_context_->set_deadline(std::min(context_->deadline(), fallback));
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
  bool missing = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::NOT_FOUND;
  if (missing && attempt_ == 0 && !context_->IsCancelled()) {
    // Once more on another one, within the deadline.
    attempt_ = 1;
    front_->counters()->retried(model_);
    front_->release(s, model_, route_, 0, false, false);
    if (const Route* other = front_->acquire_other(s, model_, routes_, route_.address, key_->rank)) {
      route_ = *other;
      return send();
    }
    // No other replica with room: the full gateway retries (after a pause, with a fresh view).
    front_->counters()->handed_off("unavailable");
    return start_bridge(true);
  }
  bool overloaded = code == grpc::StatusCode::RESOURCE_EXHAUSTED || code == grpc::StatusCode::DEADLINE_EXCEEDED;
  front_->release(s, model_, route_, latency, overloaded, true);
  front_->counters()->version(model_, route_.version, status.ok(), latency);
  if (status.ok()) {
    if (cached_) front_->cache()->put(cache_key_, flatten(response_), snapshot_->config.cache_ttl_s);
    answer(grpc::Status::OK);
  } else if (code == grpc::StatusCode::NOT_FOUND) {  // the model exists: it is not loaded there yet
    answer(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "model '" + model_ + "' is not loaded on its replicas right now; retry later"));
  } else {
    answer(grpc::Status(code, status.error_message().empty() ? "upstream error" : status.error_message()));
  }
}

// The native path's answer, counted like the Python gateway counts its own.
void Call::answer(const grpc::Status& status, int retry_after_ms) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  int code = static_cast<int>(status.error_code());
  front_->counters()->answered(key_->slug, model_, code >= 0 && code <= 16 ? names[code] : "UNKNOWN",
                               seconds_since(started_));
  if (retry_after_ms >= 0) context_->AddTrailingMetadata("retry-after-ms", std::to_string(retry_after_ms));
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
  if (ok) {
    StartWrite(&out_);  // upstream's next read starts when this write is done
    return;
  }
  release_hold(false);  // the upstream stream ended: nothing more will be sent or read on it
}

void Call::OnWriteDone(bool ok) {
  if (mode_ != Mode::kBridge) return;
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
  for (const auto& [name, value] : bridge_context_.GetServerTrailingMetadata())
    context_->AddTrailingMetadata(std::string(name.data(), name.size()), std::string(value.data(), value.size()));
  Finish(status);
  release_reference();
}

void Call::OnCancel() {
  if (mode_ == Mode::kBridge) {
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
  if (mode_ == Mode::kBridge) release_hold(true);
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

// ---------------------------------------------------------------------------------------------
int bind_socket(int fd, const sockaddr_in& addr) {
  return ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
}

// A tiny HTTP endpoint for Prometheus: GET anything answers the exposition.
void serve_metrics(const std::string& bind, Front* front, Counters* counters) {
  auto colon = bind.rfind(':');
  std::string host = bind.substr(0, colon);
  int port = std::stoi(bind.substr(colon + 1));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1 ||
      bind_socket(fd, addr) != 0 || listen(fd, 16) != 0) {
    std::cerr << "gatewayd: cannot serve metrics on " << bind << std::endl;
    std::exit(1);
  }
  std::thread([fd, front, counters] {
    for (;;) {
      int client = accept(fd, nullptr, nullptr);
      if (client < 0) continue;
      struct timeval timeout {2, 0};
      setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
      char buffer[4096];
      std::string request;
      while (request.find("\r\n\r\n") == std::string::npos && request.size() < 65536) {
        ssize_t n = recv(client, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        request.append(buffer, n);
      }
      std::string body = counters->exposition(front->replicas());
      std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                         "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
      std::string reply = head + body;
      size_t sent = 0;
      while (sent < reply.size()) {
        ssize_t n = ::send(client, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += n;
      }
      close(client);
    }
  }).detach();
}

std::atomic<bool> stopping{false};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> options;
  for (int i = 1; i + 1 < argc; i += 2) options[argv[i]] = argv[i + 1];
  for (const char* required : {"--listen", "--full", "--snapshot"}) {
    if (!options.count(required)) {
      std::cerr << "usage: gatewayd --listen HOST:PORT --full HOST:PORT --snapshot FILE [--redis HOST:PORT/DB]\n"
                   "                [--metrics-bind HOST:PORT] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]\n";
      return 2;
    }
  }
  SnapshotFile snapshots(options["--snapshot"]);
  snapshots.poll();
  Counters counters;
  Front front(options["--full"], &snapshots, &counters);
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379, redis_db = 0;
  if (options.count("--redis")) {  // host:port/db
    std::string spec = options["--redis"];
    auto slash = spec.find('/');
    if (slash != std::string::npos) {
      redis_db = std::stoi(spec.substr(slash + 1));
      spec = spec.substr(0, slash);
    }
    auto colon = spec.rfind(':');
    redis_host = spec.substr(0, colon);
    redis_port = std::stoi(spec.substr(colon + 1));
  }
  front.set_stores(std::make_unique<Quotas>(redis_host, redis_port, redis_db),
                   std::make_unique<CacheStore>(redis_host, redis_port, redis_db));

  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.count("--tls-cert")) {
    auto slurp = [](const std::string& path) {
      std::ifstream in(path);
      std::stringstream buffer;
      buffer << in.rdbuf();
      return buffer.str();
    };
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({slurp(options["--tls-key"]), slurp(options["--tls-cert"])});
    if (options.count("--tls-client-ca")) {
      tls.pem_root_certs = slurp(options["--tls-client-ca"]);
      tls.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(tls);
  }
  int port = 0;
  builder.AddListeningPort(options["--listen"], credentials, &port);
  builder.SetMaxReceiveMessageSize(256 * 1024 * 1024);
  builder.SetMaxSendMessageSize(256 * 1024 * 1024);
  builder.RegisterCallbackGenericService(&front);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "gatewayd: cannot listen on " << options["--listen"] << std::endl;
    return 1;
  }
  if (options.count("--metrics-bind") && !options["--metrics-bind"].empty())
    serve_metrics(options["--metrics-bind"], &front, &counters);

  std::signal(SIGTERM, [](int) { stopping = true; });
  std::signal(SIGINT, [](int) { stopping = true; });
  std::cout << "gatewayd: listening on " << options["--listen"] << ", full gateway at " << options["--full"]
            << std::endl;
  // The housekeeping loop: snapshot reloads every 50 ms, statistics to Redis every 0.25 s.
  RedisLink statistics{redis_host, redis_port, redis_db};
  int tick = 0;
  while (!stopping) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    snapshots.poll();
    if (++tick % 5 == 0) {
      if (auto s = snapshots.current()) counters.set_instance(s->config.instance);
      counters.flush(statistics);
    }
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  counters.flush(statistics);
  std::cout.flush();
  std::_Exit(0);  // not through destructors: the quota thread still waits on its condition
}
