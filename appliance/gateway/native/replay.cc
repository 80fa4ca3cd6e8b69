// gatewayd-replay: the native front's rules driven by a script, for the parity tests
// (tests/unit/test_gateway_parity.py feeds the same script to the Python plane's modules and
// compares the answers). One JSON operation a line on stdin, one JSON answer a line on stdout.
// Randomness is fixed (the first two candidates are "the two random ones") and time is the
// script's, so both planes must decide exactly alike.

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "admission.h"
#include "counters.h"
#include "refusals.h"
#include "snapshot.h"
#include "stores.h"
#include "text.h"
#include "tokens.h"

namespace {

using json = nlohmann::json;

struct ScriptTicket final : gw::Ticket {
  std::string id;
  std::vector<gw::Route> routes;
  uint64_t seq = 0;
  int rank = 0;
  std::string model;
  std::vector<std::pair<std::string, std::string>>* granted_log;
  std::string* evicted_log;
  int* evicted_hint;
  void granted(const gw::Route& route) override { granted_log->push_back({id, route.address}); }
  void evicted(int retry_after_ms) override {
    *evicted_log = id;
    *evicted_hint = retry_after_ms;
  }
};

gw::Route route_of(const json& r) {
  return gw::Route{r.at("node").get<std::string>(), r.at("address").get<std::string>(),
                   r.value("version", std::string("1")), r.value("tenant", std::string())};
}

std::vector<gw::Route> routes_of(const json& list) {
  std::vector<gw::Route> out;
  for (const auto& r : list) out.push_back(route_of(r));
  return out;
}

json number_or_null(double v) { return v < 0 ? json(nullptr) : json(v); }

std::string unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

json view_of(const gw::Snapshot& s) {
  json keys = json::object();
  for (const auto& [hash, k] : s.keys) {
    json models = nullptr;
    if (!k.any_model) models = std::set<std::string>(k.models.begin(), k.models.end());
    keys[hash] = {{"tenant_id", k.tenant_id}, {"tenant", k.slug},  {"expires_at", k.expires_at == 0 ? json(nullptr) : json(k.expires_at)},
                  {"models", models},         {"rank", k.rank},    {"triton_priority", k.triton_priority},
                  {"rate", k.rate},           {"burst", k.burst},  {"daily", k.daily},
                  {"tokens_per_minute", k.tokens_per_minute},      {"max_tokens", k.max_tokens}};
  }
  auto sets = [](const auto& map) {
    json out = json::object();
    for (const auto& [name, values] : map) out[name] = std::set<std::string>(values.begin(), values.end());
    return out;
  };
  json routes = json::object();
  for (const auto& [model, list] : s.routes) {
    routes[model] = json::array();
    for (const auto& r : list)
      routes[model].push_back({{"node", r.node}, {"address", r.address}, {"version", r.version},
                               {"tenant", r.tenant.empty() ? json(nullptr) : json(r.tenant)}});
  }
  json generative = json::object();
  for (const auto& [model, g] : s.generative) generative[model] = {{"slots", g.slots}, {"context", g.context}};
  return {{"config",
           {{"instance", s.config.instance},
            {"cache_ttl_s", s.config.cache_ttl_s},
            {"queue_max", s.config.queue_max},
            {"queue_wait_s", s.config.queue_wait_s},
            {"initial_limit", s.config.initial_limit},
            {"max_limit", s.config.max_limit},
            {"default_timeout_s", s.config.default_timeout_s},
            {"refresh_s", s.config.refresh_s},
            {"eject_s", s.config.eject_s}}},
          {"keys", keys},
          {"grants", sets(s.grants)},
          {"permitted", sets(s.permitted)},
          {"routes", routes},
          {"weights", s.weights},
          {"priority_levels", s.priority_levels},
          {"cached_models", std::set<std::string>(s.cached_models.begin(), s.cached_models.end())},
          {"semantic_models", std::set<std::string>(s.semantic_models.begin(), s.semantic_models.end())},
          {"cache_tenants", std::set<std::string>(s.cache_tenants.begin(), s.cache_tenants.end())},
          {"low_headroom", std::set<std::string>(s.low_headroom.begin(), s.low_headroom.end())},
          {"generative", generative},
          {"engine_full", s.engine_full}};
}

}  // namespace

int main() {
  double now = 0;
  gw::Admission admission([&now] { return now; }, [](size_t) { return std::make_pair<size_t, size_t>(0, 1); });
  std::map<std::string, std::unique_ptr<ScriptTicket>> tickets;
  std::vector<std::pair<std::string, std::string>> granted_log;
  std::string evicted_log;
  int evicted_hint = 0;
  gw::Counters counters;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    json op = json::parse(line);
    std::string kind = op.at("op").get<std::string>();
    json out = json::object();
    granted_log.clear();
    evicted_log.clear();
    if (kind == "configure") {
      admission.configure(op.at("queue_max").get<int>(), op.at("initial_limit").get<double>(),
                          op.at("max_limit").get<double>());
    } else if (kind == "clock") {
      now = op.at("now").get<double>();
    } else if (kind == "take") {
      auto routes = routes_of(op.at("routes"));
      const gw::Route* r = admission.take(op.at("model"), routes, op.at("rank"), op.value("exclude", std::string()));
      out["route"] = r ? json(r->address) : json(nullptr);
    } else if (kind == "join") {
      auto ticket = std::make_unique<ScriptTicket>();
      ticket->id = op.at("id").get<std::string>();
      ticket->routes = routes_of(op.at("routes"));
      ticket->rank = op.at("rank").get<int>();
      ticket->model = op.at("model").get<std::string>();
      ticket->granted_log = &granted_log;
      ticket->evicted_log = &evicted_log;
      ticket->evicted_hint = &evicted_hint;
      int hint = 0;
      gw::Ticket* evicted = nullptr;
      auto joined = admission.join(ticket.get(), ticket->model, &ticket->routes, ticket->rank, ticket->seq, hint, evicted);
      out["joined"] = joined == gw::Admission::Joined::kQueued ? "queued" : "shed";
      out["hint"] = hint;
      if (joined == gw::Admission::Joined::kShed) {
        auto refused = gw::refuse(contract::refusal::kQueueFull, {{"model", ticket->model}});
        out["refusal"] = {gw::status_name(refused.code), refused.text};
      } else {
        tickets[ticket->id] = std::move(ticket);
      }
    } else if (kind == "leave") {
      auto& t = tickets.at(op.at("id").get<std::string>());
      out["left"] = admission.leave(t.get(), t->model, t->rank, t->seq);
    } else if (kind == "release") {
      double seconds = op.at("seconds").is_null() ? -1 : op.at("seconds").get<double>();
      auto headroom = op.value("low_headroom", std::vector<std::string>());
      gw::Route route = route_of(op.at("route"));
      bool may_grow = std::find(headroom.begin(), headroom.end(), route.node) == headroom.end();
      admission.release(op.at("model"), route, seconds, op.value("overloaded", false), may_grow);
    } else if (kind == "eject") {
      admission.eject(op.at("model"), op.at("address"), op.at("seconds").get<double>());
    } else if (kind == "hint") {
      out["hint"] = admission.hint(op.at("model"), routes_of(op.at("routes")));
    } else if (kind == "refusal") {
      const contract::Refusal* refusal = gw::refusal_named(op.at("name").get<std::string>());
      if (refusal == nullptr) {
        out["error"] = "no such refusal";
      } else {
        std::vector<std::pair<std::string, std::string>> values;
        for (const auto& [name, value] : op.at("fields").items())
          values.push_back({name, value.is_string()           ? value.get<std::string>()
                                  : value.is_number_float()   ? gw::number(value.get<double>())
                                                              : std::to_string(value.get<long long>())});
        // fill() takes a fixed list; the contract's templates have at most three fields.
        values.resize(3, {"", ""});
        auto refused = gw::refuse(*refusal, {{values[0].first, values[0].second},
                                             {values[1].first, values[1].second},
                                             {values[2].first, values[2].second}});
        out["status"] = gw::status_name(refused.code);
        out["text"] = refused.text;
      }
    } else if (kind == "quota_refusal") {
      gw::KeyEntry key;
      key.slug = op.at("tenant").get<std::string>();
      key.rate = op.at("rate").get<int>();
      key.daily = op.at("daily").get<int>();
      gw::Verdict verdict{false, op.at("retry_ms").get<long long>(), op.at("reason").get<int>()};
      auto refused = gw::quota_refusal(key, verdict);
      out["status"] = gw::status_name(refused.code);
      out["text"] = refused.text;
    } else if (kind == "cache_key") {
      std::string key;
      bool ok = gw::cache_key(op.at("instance"), op.at("tenant"), op.at("model"), op.at("version"),
                              unhex(op.at("raw").get<std::string>()), key);
      out["key"] = ok ? json(key) : json(nullptr);
    } else if (kind == "snapshot" || kind == "permitted") {
      std::ifstream in(op.at("path").get<std::string>());
      std::stringstream text;
      text << in.rdbuf();
      try {
        auto s = gw::parse_snapshot(text.str());
        out["ok"] = true;
        if (kind == "snapshot") {
          out["view"] = view_of(*s);
        } else {
          json addresses = json::array();
          const auto& key = s->keys.at(op.at("key").get<std::string>());
          for (const auto& r : gw::permitted_routes(*s, key, op.at("model"), op.value("version", std::string())))
            addresses.push_back(r.address);
          out["routes"] = addresses;
        }
      } catch (const std::exception& exc) {
        out["ok"] = false;
        out["reason"] = exc.what();
      }
    } else if (kind == "answered") {
      counters.answered(op.at("tenant"), op.at("model"), op.at("status"), op.at("seconds").get<double>());
    } else if (kind == "version") {
      counters.version(op.at("model"), op.at("version"), op.at("ok").get<bool>(), op.at("seconds").get<double>());
    } else if (kind == "queued") {
      counters.queued(op.at("tenant"), op.at("model"), op.at("seconds").get<double>());
    } else if (kind == "cache") {
      counters.cache(op.at("tenant"), op.at("model"), op.at("hit").get<bool>());
    } else if (kind == "flush") {
      gw::RedisLink link = gw::parse_redis(op.at("redis").get<std::string>());
      counters.set_instance(op.at("instance").get<std::string>());
      out["flushed"] = counters.flush(link, op.at("now").get<double>());
      if (link.context) redisFree(link.context);
    } else if (kind == "tokens_asked") {
      long long asked = 0;
      std::string why;
      if (gw::max_tokens_of(unhex(op.at("raw").get<std::string>()), op.at("context").get<long long>(), asked, why))
        out["asked"] = asked;
      else
        out["why"] = why;
    } else if (kind == "within_caps") {
      gw::KeyEntry key;
      key.slug = op.at("tenant").get<std::string>();
      key.tokens_per_minute = op.at("tpm").get<long long>();
      key.max_tokens = op.at("cap").get<long long>();
      bool store = false;
      gw::Refused refused{0, ""};
      if (gw::within_caps(key, op.at("asked").get<long long>(), store, refused)) {
        out["store"] = store;
      } else {
        out["status"] = gw::status_name(refused.code);
        out["text"] = refused.text;
      }
    } else if (kind == "ask_for_counts") {
      std::string raw = unhex(op.at("raw").get<std::string>());
      out["ok"] = gw::ask_for_counts(raw);
      std::string hex;
      for (unsigned char c : raw) {
        static const char digits[] = "0123456789abcdef";
        hex.push_back(digits[c >> 4]);
        hex.push_back(digits[c & 15]);
      }
      out["raw"] = hex;
    } else if (kind == "budget") {
      gw::Budget budget;
      budget.reserved = op.at("reserved").get<long long>();
      for (const auto& [minute, tokens] : op.at("minutes").items()) budget.minutes[std::stoll(minute)] = tokens.get<long long>();
      json counted = json::array(), errors = json::array();
      for (const auto& response : op.at("responses")) {
        std::string raw = unhex(response.get<std::string>());
        counted.push_back(budget.count(raw));
        errors.push_back(gw::stream_error(raw));
      }
      out["counted"] = counted;
      out["errors"] = errors;
      out["total"] = budget.counted;
      out["prompt"] = budget.prompt;
      out["uncounted"] = budget.uncounted;
      out["ended"] = budget.ended;
      json unused = json::array();
      for (const auto& [minute, tokens] : budget.unused()) unused.push_back({minute, tokens});
      out["unused"] = unused;
    } else if (kind == "ttft") {
      counters.ttft(op.at("model"), op.at("version"), op.at("seconds").get<double>());
    } else if (kind == "inter_token") {
      counters.inter_token(op.at("model"), op.at("version"), op.at("seconds").get<double>());
    } else if (kind == "stream_answered") {
      counters.stream_answered(op.at("tenant"), op.at("model"), op.at("ok").get<bool>(), op.at("seconds").get<double>());
    } else if (kind == "stream_ended") {
      gw::Counters::Stream stream;
      stream.first_response_s = op.at("first_response_s").is_null() ? -1 : op.at("first_response_s").get<double>();
      stream.seconds = op.at("seconds").get<double>();
      stream.responses = op.at("responses").get<long long>();
      stream.output_tokens = op.at("output_tokens").get<long long>();
      stream.input_tokens = op.at("input_tokens").get<long long>();
      stream.decode_tokens = op.at("decode_tokens").get<long long>();
      stream.decode_s = op.at("decode_s").get<double>();
      counters.stream_ended(op.at("tenant"), op.at("model"), op.at("version"), stream);
    } else if (kind == "exposition") {
      out["text"] = counters.exposition(admission.replicas(), true, 0, 0);
    } else {
      out["error"] = "unknown op " + kind;
    }
    if (!granted_log.empty()) out["granted"] = granted_log;
    if (!evicted_log.empty()) out["evicted"] = {evicted_log, evicted_hint};
    json limiters = json::object();
    for (const auto& [where, l] : admission.limiters())
      limiters[where.first + "|" + where.second] = {l.limit, l.inflight, number_or_null(l.baseline),
                                                    number_or_null(l.latency), l.down_until};
    out["limiters"] = limiters;
    std::cout << out.dump() << "\n";
  }
  return 0;
}
