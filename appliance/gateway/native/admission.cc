#include "admission.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>

#include "clock.h"
#include "contract.h"

namespace gw {

int Limiter::capacity(int rank) const { return std::max(1, static_cast<int>(limit * contract::kShare[rank])); }

double Limiter::cost() const { return (inflight + 1) * (baseline > 0 ? baseline : contract::kCostDefaultBaselineS); }

void Limiter::done(double seconds, bool overloaded, bool may_grow, double now) {
  if (baseline < 0 || seconds < baseline) {
    baseline = seconds;
  } else if (sampled >= 0) {
    baseline += (seconds - baseline) * std::min(1.0, std::max(0.0, now - sampled) / contract::kLimitDriftS);
  }
  sampled = now;
  latency = latency < 0 ? seconds : latency + (seconds - latency) * contract::kLimitLatencySmoothing;
  double target;
  if (overloaded) {
    target = limit * contract::kLimitOverloadFactor;
  } else {
    double gradient = std::max(contract::kLimitGradientFloor,
                               std::min(1.0, (contract::kLimitTolerance * baseline + contract::kLimitSlackS) / latency));
    bool used = inflight + 1 >= limit * contract::kLimitUsedFraction;
    target = limit * gradient + (used && may_grow ? std::sqrt(limit) : 0.0);
    if (!may_grow) target = std::min(target, limit);
  }
  limit = std::min(maximum, std::max(contract::kLimitMin, limit * (1 - contract::kLimitSmoothing) +
                                                              target * contract::kLimitSmoothing));
}

Admission::Admission(std::function<double()> clock, Picker pick)
    : clock_(clock ? std::move(clock) : std::function<double()>(monotonic_now)), pick_(std::move(pick)) {
  if (!pick_) {
    auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
    pick_ = [rng](size_t n) {
      std::uniform_int_distribution<size_t> draw(0, n - 1);
      size_t a = draw(*rng), b = draw(*rng);
      while (b == a) b = draw(*rng);
      return std::make_pair(a, b);
    };
  }
}

void Admission::configure(int queue_max, double initial_limit, double max_limit) {
  queue_max_ = queue_max;
  initial_limit_ = std::min(initial_limit, max_limit);
  max_limit_ = max_limit;
}

Limiter& Admission::limiter(const std::string& address, const std::string& model) {
  auto it = limiters_.find({address, model});
  if (it == limiters_.end()) {
    Limiter l;
    l.maximum = max_limit_;
    l.limit = initial_limit_;
    auto fixed = slots_.find(model);
    if (fixed != slots_.end()) {
      l.maximum = fixed->second;
      l.limit = pressed_.count({address, model}) ? 1.0 : fixed->second;
    }
    it = limiters_.emplace(std::make_pair(address, model), l).first;
  }
  return it->second;
}

void Admission::set_generative(const std::map<std::string, int>& slots,
                               const std::set<std::pair<std::string, std::string>>& pressed) {
  slots_ = slots;
  pressed_ = pressed;
  for (auto& [key, l] : limiters_) {
    auto fixed = slots_.find(key.second);
    if (fixed == slots_.end()) continue;
    l.maximum = fixed->second;
    l.limit = pressed_.count(key) ? 1.0 : fixed->second;
  }
}

const Route* Admission::least_loaded(const std::string& model, const std::vector<const Route*>& candidates) {
  if (candidates.empty()) return nullptr;
  if (candidates.size() == 1) return candidates[0];
  auto [i, j] = pick_(candidates.size());
  const Route* a = candidates[i];
  const Route* b = candidates[j];
  return limiter(a->address, model).cost() <= limiter(b->address, model).cost() ? a : b;
}

const Route* Admission::take(const std::string& model, const std::vector<Route>& routes, int rank,
                             const std::string& exclude) {
  double now = clock_();
  bool any_up = false;
  std::vector<const Route*> room, ejected_room;
  for (const auto& r : routes) {
    if (!exclude.empty() && r.address == exclude) continue;
    Limiter& l = limiter(r.address, model);
    bool down = l.down_until > now;
    any_up = any_up || !down;
    if (l.inflight < l.capacity(rank)) (down ? ejected_room : room).push_back(&r);
  }
  const Route* chosen = least_loaded(model, any_up ? room : ejected_room);
  if (chosen != nullptr) limiter(chosen->address, model).inflight++;
  return chosen;
}

Admission::Joined Admission::join(Ticket* ticket, const std::string& model, const std::vector<Route>* routes, int rank,
                                  uint64_t& seq, int& retry_after_ms, Ticket*& evicted) {
  evicted = nullptr;
  auto& queue = queues_[model];
  retry_after_ms = hint(model, *routes);
  if (static_cast<int>(queue.size()) >= queue_max_) {
    if (queue.empty()) return Joined::kShed;  // GATEWAY_QUEUE_MAX=0: no queue at all
    auto worst = std::prev(queue.end());      // lowest class, newest arrival
    if (worst->rank <= rank) return Joined::kShed;
    worst->ticket->evicted(retry_after_ms);
    evicted = worst->ticket;
    queue.erase(worst);
  }
  seq = seq_++;
  queue.insert(Waiter{rank, seq, ticket, routes});
  return Joined::kQueued;
}

bool Admission::leave(Ticket* ticket, const std::string& model, int rank, uint64_t seq) {
  auto it = queues_.find(model);
  if (it == queues_.end()) return false;
  return it->second.erase(Waiter{rank, seq, ticket, nullptr}) > 0;
}

std::vector<Ticket*> Admission::release(const std::string& model, const Route& route, double seconds, bool overloaded,
                                        bool may_grow) {
  Limiter& l = limiter(route.address, model);
  l.inflight--;
  if (seconds >= 0) l.done(seconds, overloaded, may_grow, clock_());
  std::vector<Ticket*> granted;
  auto it = queues_.find(model);
  while (it != queues_.end() && !it->second.empty()) {
    auto best = it->second.begin();
    const Route* r = take(model, *best->routes, best->rank);
    if (r == nullptr) break;  // the best waiter cannot go; a lower class never overtakes it
    best->ticket->granted(*r);
    granted.push_back(best->ticket);
    it->second.erase(best);
  }
  return granted;
}

void Admission::eject(const std::string& model, const std::string& address, double seconds) {
  limiter(address, model).down_until = clock_() + seconds;
}

int Admission::hint(const std::string& model, const std::vector<Route>& routes) {
  double best = contract::kHintDefaultBaselineS;
  bool any = false;
  for (const auto& r : routes) {
    double b = limiter(r.address, model).baseline;
    b = b > 0 ? b : contract::kHintDefaultBaselineS;
    best = any ? std::min(best, b) : b;
    any = true;
  }
  return std::max(contract::kHintMinMs, static_cast<int>(best * 1000 * contract::kHintFactor));
}

size_t Admission::queued(const std::string& model) const {
  auto it = queues_.find(model);
  return it == queues_.end() ? 0 : it->second.size();
}

std::map<std::string, std::pair<int, double>> Admission::replicas() const {
  std::map<std::string, std::pair<int, double>> out;
  for (const auto& [key, l] : limiters_) {
    auto& v = out[key.first];
    v.first += l.inflight;
    v.second += l.limit;
  }
  return out;
}

}  // namespace gw
