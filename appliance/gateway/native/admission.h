// Admission (admission.py is the Python twin): each replica's adaptive concurrency limit, the
// choice between replicas, and each model's priority queue. Not thread-safe: the front calls it
// under one lock and wakes the tickets it returns after letting go of it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "snapshot.h"

namespace gw {

// A latency gradient in the manner of Netflix's Gradient2 (admission.py Limiter has the why).
struct Limiter {
  double limit = 16, maximum = 512;
  int inflight = 0;
  double baseline = -1, latency = -1, sampled = -1;  // seconds; -1: none yet
  double down_until = 0;  // monotonic seconds: passed over until then (the replica was not there)

  int capacity(int rank) const;
  double cost() const;
  void done(double seconds, bool overloaded, bool may_grow, double now);
};

// A request waiting in a model's queue, as admission sees it (call.cc's Call).
class Ticket {
 public:
  virtual ~Ticket() = default;
  // Called under the admission's lock: the waiter has a slot on this route / was shed for a
  // higher class. The front wakes the ticket after the lock is let go.
  virtual void granted(const Route& route) = 0;
  virtual void evicted(int retry_after_ms) = 0;
};

class Admission {
 public:
  // Two distinct indices below n (n >= 2): the two random candidates of "the less loaded of two".
  using Picker = std::function<std::pair<size_t, size_t>(size_t n)>;

  explicit Admission(std::function<double()> clock = nullptr, Picker pick = nullptr);

  // The settings of the current snapshot: queue bound, first and highest limit of new limiters.
  void configure(int queue_max, double initial_limit, double max_limit);

  // Generative models (admission.py set_slots and engine_pressure): a replica takes a fixed number
  // of streams, its engine's sequences × ENGINE_QUEUE_FACTOR; one whose engine last reported no
  // room, (address, model) in `pressed`, takes one while nothing is in flight there.
  void set_generative(const std::map<std::string, int>& slots,
                      const std::set<std::pair<std::string, std::string>>& pressed);

  // One per replica: a model on one Triton (models on one Triton answer at their own speeds).
  Limiter& limiter(const std::string& address, const std::string& model);

  // A slot now on the less loaded of two random replicas with room for this class (nullptr:
  // none); ejected replicas are passed over while any other one is up.
  const Route* take(const std::string& model, const std::vector<Route>& routes, int rank,
                    const std::string& exclude = "");

  enum class Joined { kQueued, kShed };
  // A place in the model's queue. A full queue sheds its lowest class first: a newcomer of a
  // higher class evicts the newest lowest-class waiter (`evicted`, told under the lock),
  // otherwise the newcomer is shed. `routes` must live while the ticket waits.
  Joined join(Ticket* ticket, const std::string& model, const std::vector<Route>* routes, int rank, uint64_t& seq,
              int& retry_after_ms, Ticket*& evicted);

  // Leaves the queue (deadline, queue wait, cancellation). True if the ticket was still waiting.
  bool leave(Ticket* ticket, const std::string& model, int rank, uint64_t seq);

  // Frees a slot; `seconds` >= 0 teaches the limiter (an answer's latency), < 0 proves nothing
  // about load. Free slots go to the best waiters, which are returned (granted under the lock).
  std::vector<Ticket*> release(const std::string& model, const Route& route, double seconds, bool overloaded,
                               bool may_grow);

  // The replica was not there to answer: pass over it for `seconds`.
  void eject(const std::string& model, const std::string& address, double seconds);

  // A retry hint: about HINT_FACTOR answers' time on the least loaded replica.
  int hint(const std::string& model, const std::vector<Route>& routes);

  size_t queued(const std::string& model) const;
  // Every limiter by (address, model): for the metrics and the parity tests.
  const std::map<std::pair<std::string, std::string>, Limiter>& limiters() const { return limiters_; }
  // Per replica address, summed over its models: in flight and limit (the metrics).
  std::map<std::string, std::pair<int, double>> replicas() const;

 private:
  struct Waiter {
    int rank;
    uint64_t seq;
    Ticket* ticket;
    const std::vector<Route>* routes;
    bool operator<(const Waiter& other) const { return rank != other.rank ? rank < other.rank : seq < other.seq; }
  };

  const Route* least_loaded(const std::string& model, const std::vector<const Route*>& candidates);

  std::function<double()> clock_;
  Picker pick_;
  int queue_max_ = 256;
  double initial_limit_ = 16, max_limit_ = 512;
  std::map<std::pair<std::string, std::string>, Limiter> limiters_;
  std::map<std::string, int> slots_;
  std::set<std::pair<std::string, std::string>> pressed_;
  std::unordered_map<std::string, std::set<Waiter>> queues_;
  uint64_t seq_ = 1;
};

}  // namespace gw
