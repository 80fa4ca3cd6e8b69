#include "counters.h"

#include <algorithm>
#include <iostream>
#include <iterator>
#include <sstream>
#include <tuple>

#include "contract.h"
#include "text.h"

namespace gw {
namespace {

template <typename Bounds>
size_t bucket_of(const Bounds& bounds, double value) {  // bisect_left
  return std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
}

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

std::string s(std::string_view view) { return std::string(view); }

std::string labels_of(const std::string& model) { return "plane=\"native\",model=\"" + label_escape(model) + "\""; }

std::string labels_of(const std::pair<std::string, std::string>& model_version) {
  return labels_of(model_version.first) + ",version=\"" + label_escape(model_version.second) + "\"";
}

// One histogram family, a series per key (a model, or a model and version).
template <typename Key>
void histogram(std::ostringstream& out, std::string_view name, std::string_view help,
               const std::map<Key, Histogram>& series) {
  out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  for (const auto& [key, h] : series) {
    std::string labels = labels_of(key);
    uint64_t seen = 0;
    for (size_t i = 0; i < contract::kLatencyBucketsS.size(); ++i) {
      seen += h.counts[i];
      std::string le = shortest(contract::kLatencyBucketsS[i]);  // as prometheus_client writes a bound
      out << name << "_bucket{" << labels << ",le=\"" << le << "\"} " << seen << "\n";
    }
    seen += h.counts.back();
    out << name << "_bucket{" << labels << ",le=\"+Inf\"} " << seen << "\n";
    out << name << "_count{" << labels << "} " << seen << "\n" << name << "_sum{" << labels << "} " << h.sum << "\n";
  }
}

}  // namespace

bool RedisLink::connect() {
  if (context != nullptr && !context->err) return true;
  if (context != nullptr) redisFree(context);
  struct timeval timeout {0, 500000};
  context = redisConnectWithTimeout(host.c_str(), port, timeout);
  if (context == nullptr || context->err) return false;
  redisSetTimeout(context, timeout);
  if (db) freeReplyObject(redisCommand(context, "SELECT %d", db));
  return !context->err;
}

RedisLink parse_redis(const std::string& spec_in) {
  RedisLink link{"127.0.0.1", 6379, 0, nullptr};
  std::string spec = spec_in;
  auto slash = spec.find('/');
  if (slash != std::string::npos) {
    link.db = std::stoi(spec.substr(slash + 1));
    spec = spec.substr(0, slash);
  }
  auto colon = spec.rfind(':');
  link.host = spec.substr(0, colon);
  link.port = std::stoi(spec.substr(colon + 1));
  return link;
}

Histogram::Histogram() : counts(contract::kLatencyBucketsS.size() + 1, 0) {}

void Histogram::observe(double seconds) {
  counts[bucket_of(contract::kLatencyBucketsS, seconds)]++;
  sum += seconds;
}

Row::Row() : buckets(contract::kStatsBucketsMs.size() + 1, 0) {}

void Row::count(bool ok, double seconds) {
  double ms_ = seconds * 1000.0;
  n += 1;
  if (!ok) err += 1;
  ms += ms_;
  buckets[bucket_of(contract::kStatsBucketsMs, ms_)] += 1;
}

void Counters::answered(const std::string& tenant, const std::string& model, const std::string& status,
                        double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_[{tenant, model, status}] += 1;
  latency_[model].observe(seconds);
  traffic_[{tenant, model}].count(status == "OK", seconds);
}

void Counters::version(const std::string& model, const std::string& version, bool ok, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  versions_[{model, version}].count(ok, seconds);
}

void Counters::queued(const std::string& tenant, const std::string& model, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_[model].observe(seconds);
  auto& row = traffic_[{tenant, model}];
  row.queued += 1;
  row.qms += seconds * 1000.0;
}

void Counters::shed(const std::string& model, int rank, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shed_[{model, s(contract::kClassNames[rank]), reason}] += 1;
}

void Counters::cache(const std::string& tenant, const std::string& model, bool hit) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_[{model, hit ? "hit" : "miss"}] += 1;
  auto& row = traffic_[{tenant, model}];
  (hit ? row.hit : row.miss) += 1;
}

void Counters::retried(const std::string& model) {
  std::lock_guard<std::mutex> lock(mu_);
  retried_[model] += 1;
}

void Counters::handed_off(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  handoffs_[reason] += 1;
}

void Counters::ttft(const std::string& model, const std::string& version, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_[{model, version}].observe(seconds);
}

void Counters::inter_token(const std::string& model, const std::string& version, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  inter_token_[{model, version}].observe(seconds);
}

void Counters::stream_answered(const std::string& tenant, const std::string& model, bool ok, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  traffic_[{tenant, model}].count(ok, seconds);
}

void Counters::stream_ended(const std::string& tenant, const std::string& model, const std::string& version,
                            const Stream& stream) {
  std::lock_guard<std::mutex> lock(mu_);
  output_tokens_[{tenant, model, version}] += static_cast<double>(stream.output_tokens);
  input_tokens_[{tenant, model, version}] += static_cast<double>(stream.input_tokens);
  if (stream.decode_tokens) {
    auto& row = versions_[{model, version}];
    row.dtok += static_cast<double>(stream.decode_tokens);
    row.dsec += stream.decode_s;
  }
  if (stream.first_response_s < 0) return;  // a stream that never answered has no time to first response
  auto& row = traffic_[{tenant, model}];
  row.streams += 1;
  row.ttfr += stream.first_response_s * 1000.0;
  row.sresp += static_cast<double>(stream.responses);
  row.ssec += stream.seconds;
  row.otok += static_cast<double>(stream.output_tokens);
  row.dtok += static_cast<double>(stream.decode_tokens);
  row.dsec += stream.decode_s;
}

void Counters::set_instance(const std::string& instance) {
  std::lock_guard<std::mutex> lock(mu_);
  instance_ = instance;
}

bool Counters::flush(RedisLink& link, double now) {
  std::map<std::pair<std::string, std::string>, Row> traffic, versions;
  std::string instance;
  {
    std::lock_guard<std::mutex> lock(mu_);
    traffic.swap(traffic_);
    versions.swap(versions_);
    instance = instance_;
  }
  if (traffic.empty() && versions.empty()) return true;
  if (!link.connect()) {
    std::cerr << "gatewayd: request statistics not stored (Redis unreachable)" << std::endl;
    return false;
  }
  redisContext* redis = link.context;
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
  std::string minute_key = fill(contract::kKeyTraffic, {{"instance", instance}, {"minute", std::to_string(second / 60 * 60)}});
  for (const auto& [labels, row] : traffic) {
    // In contract.TRAFFIC_FIELDS' order, then the latency buckets.
    const double values[] = {row.n,       row.err,  row.ms,    row.queued, row.qms,  row.hit,  row.miss,
                             row.streams, row.ttfr, row.sresp, row.ssec,   row.otok, row.dtok, row.dsec};
    static_assert(std::size(values) == contract::kTrafficFields.size(), "one value per contract.TRAFFIC_FIELDS");
    std::vector<std::pair<std::string, double>> fields;
    for (size_t i = 0; i < std::size(values); ++i) fields.push_back({s(contract::kTrafficFields[i]), values[i]});
    for (size_t i = 0; i < row.buckets.size(); ++i) fields.push_back({"b" + std::to_string(i), row.buckets[i]});
    for (const auto& [name, value] : fields)
      if (value != 0)
        add({"HINCRBYFLOAT", minute_key,
             fill(contract::kTrafficField, {{"tenant", labels.first}, {"model", labels.second}, {"name", name}}),
             shortest(value)});
  }
  if (!traffic.empty()) add({"EXPIRE", minute_key, std::to_string(contract::kTrafficKeepS)});
  for (const auto& [labels, row] : versions) {
    std::string key = fill(contract::kKeyVstats, {{"instance", instance},
                                                  {"model", labels.first},
                                                  {"version", labels.second},
                                                  {"second", std::to_string(second)}});
    if (row.dtok && row.dsec) {  // a generative version's decoding (the tokens/s gate)
      add({"HINCRBYFLOAT", key, s(contract::kVstatsDecodeFields[0]), shortest(row.dtok)});
      add({"HINCRBYFLOAT", key, s(contract::kVstatsDecodeFields[1]), shortest(row.dsec)});
      add({"EXPIRE", key, std::to_string(contract::kVstatsKeepS)});
    }
    if (!row.n) continue;  // decoding only: a stream counted in an earlier flush
    add({"HINCRBY", key, "n", std::to_string(static_cast<long>(row.n))});
    if (row.err) add({"HINCRBY", key, "err", std::to_string(static_cast<long>(row.err))});
    add({"HINCRBYFLOAT", key, "ms", shortest(row.ms)});
    for (size_t i = 0; i < row.buckets.size(); ++i)
      if (row.buckets[i])
        add({"HINCRBY", key, "b" + std::to_string(i), std::to_string(static_cast<long>(row.buckets[i]))});
    add({"EXPIRE", key, std::to_string(contract::kVstatsKeepS)});
    add({"SET", fill(contract::kKeyLastRequest, {{"instance", instance}, {"model", labels.first}}), shortest(now), "EX",
         std::to_string(contract::kLastRequestKeepS)});
  }
  for (int i = 0; i < pending; ++i) {
    void* reply = nullptr;
    if (redisGetReply(redis, &reply) != REDIS_OK) {
      std::cerr << "gatewayd: request statistics not stored (Redis error)" << std::endl;
      return false;  // the context is marked failed and reconnects next time
    }
    freeReplyObject(reply);
  }
  return true;
}

std::string Counters::exposition(const std::map<std::string, std::pair<int, double>>& replicas, bool snapshot_ok,
                                 uint64_t snapshot_refusals, double snapshot_written) {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream out;
  out.precision(17);
  const std::string plane = "plane=\"native\"";
  auto head = [&](std::string_view name, std::string_view help, const char* type) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  };
  std::string requests = s(contract::kMetricRequests) + "_total";
  head(requests, contract::kMetricRequestsHelp, "counter");
  for (const auto& [l, v] : requests_)
    out << requests << "{" << plane << ",tenant=\"" << label_escape(std::get<0>(l)) << "\",model=\""
        << label_escape(std::get<1>(l)) << "\",status=\"" << std::get<2>(l) << "\"} " << v << "\n";
  histogram(out, contract::kMetricLatency, contract::kMetricLatencyHelp, latency_);
  histogram(out, contract::kMetricQueueTime, contract::kMetricQueueTimeHelp, queue_);
  head(contract::kMetricInflight, contract::kMetricInflightHelp, "gauge");
  for (const auto& [address, v] : replicas)
    out << contract::kMetricInflight << "{" << plane << ",replica=\"" << label_escape(address) << "\"} " << v.first
        << "\n";
  head(contract::kMetricLimit, contract::kMetricLimitHelp, "gauge");
  for (const auto& [address, v] : replicas)
    out << contract::kMetricLimit << "{" << plane << ",replica=\"" << label_escape(address) << "\"} " << v.second
        << "\n";
  std::string shed = s(contract::kMetricShed) + "_total";
  head(shed, contract::kMetricShedHelp, "counter");
  for (const auto& [l, v] : shed_)
    out << shed << "{" << plane << ",model=\"" << label_escape(std::get<0>(l)) << "\",priority=\"" << std::get<1>(l)
        << "\",reason=\"" << std::get<2>(l) << "\"} " << v << "\n";
  std::string retried = s(contract::kMetricRetried) + "_total";
  head(retried, contract::kMetricRetriedHelp, "counter");
  for (const auto& [model, v] : retried_)
    out << retried << "{" << plane << ",model=\"" << label_escape(model) << "\"} " << v << "\n";
  std::string cache = s(contract::kMetricCache) + "_total";
  head(cache, contract::kMetricCacheHelp, "counter");
  for (const auto& [l, v] : cache_)
    out << cache << "{" << plane << ",model=\"" << label_escape(l.first) << "\",result=\"" << l.second << "\"} " << v
        << "\n";
  histogram(out, contract::kMetricTtft, contract::kMetricTtftHelp, ttft_);
  histogram(out, contract::kMetricInterToken, contract::kMetricInterTokenHelp, inter_token_);
  for (auto [name, help, series] : {std::make_tuple(contract::kMetricOutputTokens, contract::kMetricOutputTokensHelp,
                                                    &output_tokens_),
                                    std::make_tuple(contract::kMetricInputTokens, contract::kMetricInputTokensHelp,
                                                    &input_tokens_)}) {
    std::string total = s(name) + "_total";
    head(total, help, "counter");
    for (const auto& [l, v] : *series)
      out << total << "{" << plane << ",tenant=\"" << label_escape(std::get<0>(l)) << "\",model=\""
          << label_escape(std::get<1>(l)) << "\",version=\"" << label_escape(std::get<2>(l)) << "\"} " << v << "\n";
  }
  head("gateway_native_handoffs_total", "Requests handed to the full (Python) gateway, by reason", "counter");
  for (const auto& [reason, v] : handoffs_)
    out << "gateway_native_handoffs_total{reason=\"" << reason << "\"} " << v << "\n";
  head("gateway_native_snapshot_ok",
       "1 while the front answers from a snapshot it loaded; 0 while it has none or refused the newest", "gauge");
  out << "gateway_native_snapshot_ok " << (snapshot_ok ? 1 : 0) << "\n";
  head("gateway_native_snapshot_refused_total", "Snapshot documents the front could not read or did not know the version of",
       "counter");
  out << "gateway_native_snapshot_refused_total " << snapshot_refusals << "\n";
  head("gateway_native_snapshot_written_seconds",
       "When the snapshot the front answers from was written (unix time; its age is how far the front's view lags)",
       "gauge");
  out << "gateway_native_snapshot_written_seconds " << snapshot_written << "\n";
  return out.str();
}

}  // namespace gw
