#include "snapshot.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "clock.h"
#include "contract.h"

namespace gw {
namespace {

using json = nlohmann::json;

std::unordered_set<std::string> string_set(const json& value) {
  std::unordered_set<std::string> out;
  if (!value.is_array()) throw std::runtime_error("expected a list of strings");
  for (const auto& item : value) out.insert(item.get<std::string>());
  return out;
}

}  // namespace

std::shared_ptr<const Snapshot> parse_snapshot(const std::string& text) {
  const json doc = json::parse(text);
  if (!doc.is_object() || !doc.contains("version") || !doc.at("version").is_number_integer())
    throw std::runtime_error("no snapshot version (a gateway older than the contract wrote it)");
  int version = doc.at("version").get<int>();
  if (version != contract::kSnapshotVersion)
    throw std::runtime_error("snapshot version " + std::to_string(version) + ", this front knows only " +
                             std::to_string(contract::kSnapshotVersion));
  auto s = std::make_shared<Snapshot>();
  const auto& c = doc.at("config");
  s->config.instance = c.at("instance").get<std::string>();
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
    if (!e.any_model) e.models = string_set(k.at("models"));
    e.rank = k.at("rank").get<int>();
    if (e.rank < 0 || e.rank >= static_cast<int>(contract::kShare.size()))
      throw std::runtime_error("a key's rank is out of range");
    e.triton_priority = k.at("triton_priority").get<int>();
    e.rate = k.at("rate").get<int>();
    e.burst = k.at("burst").get<int>();
    e.daily = k.at("daily").get<int>();
    e.tokens_per_minute = k.at("tokens_per_minute").get<long long>();
    e.max_tokens = k.at("max_tokens").get<long long>();
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
  for (const auto& [model, g] : doc.at("generative").items())
    s->generative[model] = Generative{g.at("slots").get<int>(), g.at("context").get<long long>()};
  for (const auto& pair : doc.at("engine_full")) {
    if (!pair.is_array() || pair.size() != 2) throw std::runtime_error("engine_full holds [address, model] pairs");
    s->engine_full.emplace(pair.at(0).get<std::string>(), pair.at(1).get<std::string>());
  }
  return s;
}

SnapshotFile::SnapshotFile(std::string path, std::function<double()> wall_clock)
    : path_(std::move(path)), wall_clock_(wall_clock ? std::move(wall_clock) : std::function<double()>(unix_now)) {}

bool SnapshotFile::stale(const Snapshot& s) const {
  double age = wall_clock_() - loaded_written_.load();
  return age > std::max(contract::kStaleAfterMinS, contract::kStaleAfterRefreshes * s.config.refresh_s);
}

std::string SnapshotFile::refused_reason() const {
  std::lock_guard<std::mutex> lock(reason_mu_);
  return reason_;
}

SnapshotFile::Poll SnapshotFile::poll() {
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) return Poll::kMissing;  // the view ages into staleness
  auto stamp = std::make_pair(static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec,
                              static_cast<long long>(st.st_size));
  if (stamp == stamp_) return Poll::kUnchanged;
  stamp_ = stamp;
  double written = st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9;
  std::string reason;
  try {
    std::ifstream in(path_);
    std::stringstream text;
    text << in.rdbuf();
    auto next = parse_snapshot(text.str());
    std::atomic_store(&snapshot_, next);
    loaded_written_ = written;
  } catch (const std::exception& exc) {
    reason = exc.what();
  }
  std::string before;
  {
    std::lock_guard<std::mutex> lock(reason_mu_);
    before.swap(reason_);
    reason_ = reason;
  }
  if (reason.empty()) {
    if (!before.empty()) std::cerr << "gatewayd: snapshot " << path_ << " loaded again; answering natively" << std::endl;
    return Poll::kLoaded;
  }
  // Fail closed: no view rather than an old one (revoked keys, removed routes).
  std::atomic_store(&snapshot_, std::shared_ptr<const Snapshot>());
  refusals_++;
  if (reason != before)
    std::cerr << "gatewayd: snapshot " << path_ << " refused (" << reason
              << "); every call goes to the Python gateway until a readable one arrives" << std::endl;
  return Poll::kRefused;
}

std::vector<Route> permitted_routes(const Snapshot& s, const KeyEntry& key, const std::string& model,
                                    const std::string& version) {
  std::vector<Route> out;
  auto all = s.routes.find(model);
  if (all == s.routes.end()) return out;
  auto permitted = s.permitted.find(key.tenant_id);
  if (permitted == s.permitted.end()) return out;
  bool own = false;
  for (const auto& r : all->second)
    if (r.tenant == key.tenant_id && (version.empty() || r.version == version)) own = true;
  for (const auto& r : all->second) {
    if (!version.empty() && r.version != version) continue;
    if (own ? r.tenant != key.tenant_id : !r.tenant.empty()) continue;
    if (!permitted->second.count(r.node)) continue;
    out.push_back(r);
  }
  return out;
}

std::vector<Route> choose_version(const Snapshot& s, const std::string& model, const std::vector<Route>& routes,
                                  std::mt19937_64& rng) {
  std::vector<std::string> versions;
  for (const auto& r : routes)
    if (std::find(versions.begin(), versions.end(), r.version) == versions.end()) versions.push_back(r.version);
  if (versions.size() <= 1) return routes;
  std::sort(versions.begin(), versions.end());
  std::vector<int> weights;
  int total = 0;
  auto split = s.weights.find(model);
  for (const auto& v : versions) {
    int w = 0;
    if (split != s.weights.end()) {
      auto it = split->second.find(v);
      if (it != split->second.end()) w = std::max(0, it->second);
    }
    weights.push_back(w);
    total += w;
  }
  std::string chosen;
  if (total > 0) {
    std::discrete_distribution<int> draw(weights.begin(), weights.end());
    chosen = versions[draw(rng)];
  } else {
    chosen = versions[std::uniform_int_distribution<size_t>(0, versions.size() - 1)(rng)];
  }
  std::vector<Route> out;
  for (const auto& r : routes)
    if (r.version == chosen) out.push_back(r);
  return out;
}

}  // namespace gw
