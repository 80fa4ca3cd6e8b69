// Generative streams' tokens (tokens.py is the Python twin): what a request may generate (its
// sampling parameters' max_tokens), asking the engine for its token counts, the counts each
// response carries, a stream's budget, and the Redis store that reserves a request's tokens in
// the tenant's minute (contract.TOKENS_SCRIPT) and gives back what a stream did not use
// (contract.GIVE_BACK_SCRIPT): the very same scripts and keys as the Python plane.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "counters.h"
#include "refusals.h"
#include "snapshot.h"
#include "stores.h"

namespace gw {

// What one request of a stream asks to generate (tokens.py max_tokens_of): max_tokens of its
// sampling_parameters (a JSON object in a BYTES input); the engine's default where it names
// none; `context` (the model's max_model_len) where it names null. False, with `why`, when the
// parameters are not a JSON object with a positive integer max_tokens.
bool max_tokens_of(const std::string& request, long long context, long long& asked, std::string& why);

// Appends the inputs return_num_output_tokens and return_num_input_tokens (BOOL, true) that the
// request does not carry yet (tokens.py asking_for_counts), in its raw contents if it uses them.
// False if the request or its input tensors are not well-formed protobuf (what the Python
// plane's parse of the whole request would refuse); then it is left as it was.
bool ask_for_counts(std::string& request);

// What one ModelStreamInferResponse carries (tokens.py counts_in): output tokens (absent when
// it has outputs but no count; 0 when it has no outputs) and prompt tokens (absent unless it
// closed its request).
struct Counts {
  bool has_output = true, has_prompt = false;
  long long output = 0, prompt = 0;
};
Counts counts_in(const std::string& response);

// Does a ModelStreamInferResponse carry an error (field 1, error_message, not empty)? (wire.py
// stream_error; a malformed response: no.)
bool stream_error(const std::string& response);

// What one stream reserved, and what its responses said they generated (tokens.py Budget).
struct Budget {
  long long reserved = 0, counted = 0, prompt = 0;
  bool uncounted = false;  // a response without a count: the reservation stays charged
  bool ended = false;      // the last response counted closed its request
  std::map<long long, long long> minutes;  // minute -> tokens reserved in it
  // Adds one response's counts; returns its output tokens (0 if it carried none).
  long long count(const std::string& response);
  // What to give back, newest minute first: (minute, tokens). Empty when nothing is due.
  std::vector<std::pair<long long, long long>> unused() const;
};

// A request's max_tokens against the key's limits that need no store (tokens.py
// TokenLimits.reserve before its script): false, with `refused`, when it asks for more than the
// key's cap or minute limit; true otherwise, `store` saying whether the minute must be asked.
bool within_caps(const KeyEntry& key, long long asked, bool& store, Refused& refused);

class TokenWaiter {
 public:
  virtual ~TokenWaiter() = default;
  // On the token store's thread. Redis unreachable: allowed (served without limits, logged).
  virtual void tokens_done(bool allowed, long long retry_after_ms, long long minute, bool stored) = 0;
};

class TokenStore {
 public:
  explicit TokenStore(RedisLink link);
  // contract.KEY_TOKENS_MINUTE of a tenant (the script appends the minute).
  static std::string prefix(const std::string& instance, const std::string& tenant_id);
  void reserve(TokenWaiter* waiter, std::string prefix, long long limit, long long asked) {
    queue_.push(Job{waiter, std::move(prefix), limit, asked});
  }
  // Gives `tokens` back to one minute's counter (prefix + minute), only while it exists.
  void give_back(std::string key, long long tokens) { queue_.push(Job{nullptr, std::move(key), 0, tokens}); }

 private:
  struct Job {
    TokenWaiter* waiter;  // a reservation for it; nullptr: a give-back
    std::string key;
    long long limit, tokens;
  };
  void run();

  Scripts scripts_;  // contract.TOKENS_SCRIPT, contract.GIVE_BACK_SCRIPT
  BatchQueue<Job> queue_;
  Warning warn_;
};

}  // namespace gw
