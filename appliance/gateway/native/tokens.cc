#include "tokens.h"

#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "contract.h"
#include "text.h"
#include "wire.h"

namespace gw {
namespace {

constexpr const char* kSampling = "sampling_parameters";
constexpr const char* kCountFlags[] = {"return_num_output_tokens", "return_num_input_tokens"};
constexpr const char* kCount = "num_output_tokens";
constexpr const char* kInputCount = "num_input_tokens";

std::string text_of(const PbField& f) { return std::string(f.data, f.size); }

// A tensor's name (field 1 of InferInputTensor and InferOutputTensor) and its contents (field 5).
struct Tensor {
  std::string name;
  const char* contents = nullptr;
  size_t contents_size = 0;
  bool has_contents = false;
};

bool tensor_of(const PbField& f, Tensor& t) {
  return each_field(f.data, f.size, [&](const PbField& g) {
    if (g.wire != 2) return;
    if (g.number == 1) t.name = text_of(g);
    if (g.number == 5) {
      t.contents = g.data;
      t.contents_size = g.size;
      t.has_contents = true;
    }
  });
}

// The tensors (field `tensors`) and raw contents (field `raw`) of a request or response, in order.
bool tensors_of(const char* data, size_t size, uint64_t tensors, uint64_t raw, std::vector<Tensor>& out,
                std::vector<std::pair<const char*, size_t>>& raws) {
  bool ok = true;
  bool parsed = each_field(data, size, [&](const PbField& f) {
    if (f.wire != 2) return;
    if (f.number == tensors) {
      Tensor t;
      ok = tensor_of(f, t) && ok;
      out.push_back(std::move(t));
    } else if (f.number == raw) {
      raws.emplace_back(f.data, f.size);
    }
  });
  return parsed && ok;
}

// The sum of a UINT32 output (tokens.py uint_output): from its raw contents when the response
// has any, else from contents.uint_contents (field 4, packed or not). False when it is absent.
bool uint_output(const std::vector<Tensor>& outputs, const std::vector<std::pair<const char*, size_t>>& raws,
                 const std::string& name, long long& sum) {
  for (size_t index = 0; index < outputs.size(); ++index) {
    if (outputs[index].name != name) continue;
    sum = 0;
    if (!raws.empty()) {
      if (index >= raws.size()) return false;
      const auto* bytes = reinterpret_cast<const uint8_t*>(raws[index].first);
      for (size_t at = 0; at + 4 <= raws[index].second; at += 4)
        sum += static_cast<long long>(bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 |
                                      static_cast<uint32_t>(bytes[at + 3]) << 24);
      return true;
    }
    if (!outputs[index].has_contents) return true;
    each_field(outputs[index].contents, outputs[index].contents_size, [&](const PbField& f) {
      if (f.number != 4) return;
      if (f.wire == 0) sum += static_cast<long long>(f.value);
      if (f.wire == 2) {  // packed
        const uint8_t* p = reinterpret_cast<const uint8_t*>(f.data);
        const uint8_t* end = p + f.size;
        uint64_t v;
        while (p < end && read_varint(p, end, v)) sum += static_cast<long long>(v);
      }
    });
    return true;
  }
  return false;
}

}  // namespace

bool max_tokens_of(const std::string& request, long long context, long long& asked, std::string& why) {
  asked = contract::kDefaultMaxTokens;
  std::vector<Tensor> inputs;
  std::vector<std::pair<const char*, size_t>> raws;
  if (!tensors_of(request.data(), request.size(), 5, 7, inputs, raws)) {
    why = "not JSON";
    return false;
  }
  std::string text;
  bool found = false;
  for (size_t index = 0; index < inputs.size() && !found; ++index) {
    if (inputs[index].name != kSampling) continue;
    found = true;
    if (!raws.empty()) {  // a BYTES element in raw contents: 4-byte little-endian length, then the bytes
      if (index >= raws.size() || raws[index].second < 4) return true;
      const auto* b = reinterpret_cast<const uint8_t*>(raws[index].first);
      size_t length = b[0] | b[1] << 8 | b[2] << 16 | static_cast<size_t>(b[3]) << 24;
      text.assign(raws[index].first + 4, std::min(length, raws[index].second - 4));
    } else if (inputs[index].has_contents) {  // contents.bytes_contents[0] (field 8)
      bool first = true;
      each_field(inputs[index].contents, inputs[index].contents_size, [&](const PbField& f) {
        if (f.number == 8 && f.wire == 2 && first) {
          text = text_of(f);
          first = false;
        }
      });
    }
  }
  if (text.empty()) return true;  // none named: the engine's default
  auto sampling = nlohmann::json::parse(text, nullptr, false);
  if (sampling.is_discarded()) {
    why = "not JSON";
    return false;
  }
  if (!sampling.is_object()) {
    why = "not an object";
    return false;
  }
  auto value = sampling.find("max_tokens");
  if (value == sampling.end()) return true;
  if (value->is_null()) {
    asked = context;
    return true;
  }
  if (value->is_number_unsigned()) {  // above what a long long holds: as many as one may ask
    asked = static_cast<long long>(std::min<uint64_t>(value->get<uint64_t>(), 1ULL << 62));
    if (asked >= 1) return true;
  } else if (value->is_number_integer() && value->get<long long>() >= 1) {
    asked = value->get<long long>();
    return true;
  }
  why = "max_tokens is not a positive integer";
  return false;
}

bool ask_for_counts(std::string& request) {
  std::vector<Tensor> inputs;
  std::vector<std::pair<const char*, size_t>> raws;
  if (!tensors_of(request.data(), request.size(), 5, 7, inputs, raws)) return false;
  std::set<std::string> present;
  for (const auto& t : inputs) present.insert(t.name);
  bool raw = !raws.empty();
  for (const char* flag : kCountFlags) {
    if (present.count(flag)) continue;
    std::string tensor;
    put_bytes_field(tensor, 1, flag);
    put_bytes_field(tensor, 2, "BOOL");
    put_bytes_field(tensor, 3, std::string("\x01", 1));  // shape [1], packed
    if (!raw) put_bytes_field(tensor, 5, std::string("\x0a\x01\x01", 3));  // contents.bool_contents [true]
    put_bytes_field(request, 5, tensor);
    if (raw) put_bytes_field(request, 7, std::string("\x01", 1));
  }
  return true;
}

Counts counts_in(const std::string& response) {
  Counts counts;
  const char* answer = nullptr;
  size_t answer_size = 0;
  bool parsed = each_field(response.data(), response.size(), [&](const PbField& f) {
    if (f.number == 2 && f.wire == 2) {
      answer = f.data;
      answer_size = f.size;
    }
  });
  std::vector<Tensor> outputs;
  std::vector<std::pair<const char*, size_t>> raws;
  if (!parsed || answer == nullptr || !tensors_of(answer, answer_size, 5, 6, outputs, raws) || outputs.empty())
    return counts;  // no outputs: 0 output tokens (an error, or the empty final response)
  counts.has_output = uint_output(outputs, raws, kCount, counts.output);
  counts.has_prompt = uint_output(outputs, raws, kInputCount, counts.prompt);
  return counts;
}

bool stream_error(const std::string& response) {
  bool error = false;
  bool parsed = each_field(response.data(), response.size(), [&](const PbField& f) {
    if (f.number == 1 && f.wire == 2 && f.size > 0) error = true;
  });
  return parsed && error;
}

long long Budget::count(const std::string& response) {
  Counts c = counts_in(response);
  ended = c.has_prompt;
  if (c.has_prompt) prompt += c.prompt;
  if (!c.has_output) {
    uncounted = true;
    return 0;
  }
  counted += c.output;
  return c.output;
}

std::vector<std::pair<long long, long long>> Budget::unused() const {
  std::vector<std::pair<long long, long long>> out;
  if (!reserved || uncounted) return out;
  long long left = std::max(0LL, reserved - counted);
  for (auto it = minutes.rbegin(); it != minutes.rend() && left > 0; ++it) {
    long long back = std::min(left, it->second);
    if (back <= 0) break;
    out.emplace_back(it->first, back);
    left -= back;
  }
  return out;
}

bool within_caps(const KeyEntry& key, long long asked, bool& store, Refused& refused) {
  store = false;
  long long limit = 0;
  if (key.max_tokens && asked > key.max_tokens) {
    limit = key.max_tokens;
  } else if (key.tokens_per_minute > 0 && asked > key.tokens_per_minute) {
    limit = key.tokens_per_minute;
  } else {
    store = key.tokens_per_minute > 0;
    return true;
  }
  refused = refuse(contract::refusal::kMaxTokensOver,
                   {{"asked", std::to_string(asked)}, {"tenant", key.slug}, {"limit", std::to_string(limit)}});
  return false;
}

TokenStore::TokenStore(RedisLink link)
    : scripts_(std::move(link), {std::string(contract::kTokensScript), std::string(contract::kGiveBackScript)}) {
  std::thread([this] { run(); }).detach();
}

std::string TokenStore::prefix(const std::string& instance, const std::string& tenant_id) {
  return fill(contract::kKeyTokensMinute, {{"instance", instance}, {"tenant", tenant_id}});
}

void TokenStore::run() {
  struct Result {
    bool allowed = true, stored = false;
    long long retry_ms = 0, minute = 0;
  };
  for (;;) {
    std::vector<Job> batch = queue_.take();
    std::vector<Result> results(batch.size());
    std::vector<Scripts::Eval> evals;
    for (const auto& job : batch) {
      if (job.waiter != nullptr)
        evals.push_back({0, {"1", job.key, std::to_string(job.limit), std::to_string(job.tokens)}});
      else
        evals.push_back({1, {"1", job.key, std::to_string(job.tokens)}});
    }
    bool done = scripts_.run(evals, [&](size_t i, const redisReply* reply) {
      if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        results[i] = Result{reply->element[0]->integer == 1, true, reply->element[1]->integer,
                            reply->element[2]->integer};
      } else if (reply->type == REDIS_REPLY_INTEGER) {
        results[i].stored = true;
      }
    });
    if (!done) warn_("token store unavailable; serving without token limits");  // the unanswered: fail open
    for (size_t i = 0; i < batch.size(); ++i)
      if (batch[i].waiter != nullptr)
        batch[i].waiter->tokens_done(results[i].allowed, results[i].retry_ms, results[i].minute, results[i].stored);
  }
}

}  // namespace gw
