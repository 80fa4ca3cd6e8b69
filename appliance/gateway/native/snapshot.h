// The control-plane view (snapshot.py is the Python twin: build_snapshot, export_snapshot).
// The Python gateway writes it as a JSON document of contract.SNAPSHOT_VERSION; the front loads
// only that version, and a document it cannot read leaves it with no view at all (every call
// goes to the Python plane) rather than an old one: a revoked key must never live on here.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace gw {

struct Route {
  std::string node, address, version, tenant;  // tenant: "" unless a slice is dedicated to one
  bool operator==(const Route& other) const {
    return node == other.node && address == other.address && version == other.version && tenant == other.tenant;
  }
};

struct KeyEntry {
  std::string tenant_id, slug;
  double expires_at = 0;  // unix time, 0: never
  bool any_model = true;
  std::unordered_set<std::string> models;
  int rank = 1;
  int triton_priority = 2;
  int rate = 0, burst = 0, daily = 0;  // requests a second, bucket size, a UTC day (0: none)
  long long tokens_per_minute = 0, max_tokens = 0;  // generative models' streams (0: no limit)
};

// A generative model: a replica's stream slots, and its engine's context (max_model_len).
struct Generative {
  int slots = 0;
  long long context = 0;
};

struct Config {
  std::string instance = "appliance";
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
  std::unordered_map<std::string, Generative> generative;
  std::set<std::pair<std::string, std::string>> engine_full;  // (replica address, model): no room for a stream
};

// Parses a document; throws std::exception (with the reason) for a version it does not know or
// a document it cannot read.
std::shared_ptr<const Snapshot> parse_snapshot(const std::string& text);

class SnapshotFile {
 public:
  explicit SnapshotFile(std::string path, std::function<double()> wall_clock = nullptr);

  // The view to answer from; null when none was loaded or the newest document was refused.
  std::shared_ptr<const Snapshot> current() const { return std::atomic_load(&snapshot_); }

  // Nobody rewrote a loadable document for a while (the Python gateway is gone or stuck):
  // counted from when the document the view came from was written.
  bool stale(const Snapshot& s) const;

  enum class Poll { kUnchanged, kLoaded, kRefused, kMissing };
  // Loads the document when the file's modification time or size changed.
  Poll poll();

  std::string refused_reason() const;  // why the newest document was refused; "" when serving
  uint64_t refusals() const { return refusals_.load(); }
  // When the document the front answers from was written (unix seconds; 0 before the first).
  double loaded_written() const { return loaded_written_.load(); }

 private:
  std::string path_;
  std::function<double()> wall_clock_;
  std::pair<long long, long long> stamp_{-1, -1};
  std::atomic<double> loaded_written_{0};  // unix time the loaded document was written
  std::atomic<uint64_t> refusals_{0};
  mutable std::mutex reason_mu_;
  std::string reason_;
  std::shared_ptr<const Snapshot> snapshot_;
};

// The routes a request may use (server.py for_tenant and permitted_for): of the pinned version
// if any; a slice dedicated to the key's tenant serves that tenant only, and it first; then only
// nodes the residency policy permits for the tenant.
std::vector<Route> permitted_routes(const Snapshot& s, const KeyEntry& key, const std::string& model,
                                    const std::string& version);

// During a rollout, the routes of one version drawn by the model's traffic split (server.py
// choose_version): versions sorted, drawn by weight, uniformly when no version has weight.
std::vector<Route> choose_version(const Snapshot& s, const std::string& model, const std::vector<Route>& routes,
                                  std::mt19937_64& rng);

}  // namespace gw
