"""The gateway contract: everything the two planes of the gateway must agree on.

The gateway answers on two planes: the Python gateway (server.py and its modules)
and the native front (native/*.cc), which answers the hot path itself and hands
the rest to the Python gateway. Whatever both must agree on lives here, once:

- the snapshot document the Python gateway exports and the front loads, with a
  version number (a front that does not know the version refuses the document);
- the Redis keyspace and field names (statistics the rollout gates and the
  console read, rate limits and quotas, the exact response cache);
- histogram bounds, class shares, limiter and hint constants;
- the retry and ejection rules' parameters (which upstream statuses mean the
  replica was not there, which mean it is overloaded);
- the refusals both planes answer: status and text.

Python modules import these names; the native front includes a C++ header
generated from this file at build time (`python3 appliance/gateway/contract.py
--cpp`, the Makefile's `native` target), so neither side can drift from it. The
parity tests (tests/unit/test_gateway_parity.py) feed the same events to both
planes and compare what they decide, count and answer.

Pure standard library, importable without Django (the build runs it as a script).
"""

from __future__ import annotations

import json
import sys

# --- the snapshot document ------------------------------------------------------------------
# Bump on any change the other side must know about (a field renamed, removed or whose
# meaning changed). The front loads only this version: anything else is refused (every call
# handed to the Python plane) until both sides run the same contract.
SNAPSHOT_VERSION = 3

# The document's fields, for the record and for the schema test; the front reads each of them.
SNAPSHOT_FIELDS = {
    "version": "int: SNAPSHOT_VERSION",
    "config": {
        "instance": "str: the key prefix of every Redis key (settings.INSTANCE)",
        "cache_ttl_s": "int: lifetime of an exact-cache answer",
        "queue_max": "int: per-model bound of the gateway queue",
        "queue_wait_s": "float: longest wait for a replica slot",
        "initial_limit": "float: first concurrency limit of a replica",
        "max_limit": "float: highest concurrency limit of a replica",
        "default_timeout_s": "float: upstream deadline when the client sent none",
        "refresh_s": "float: how often the Python gateway rewrites the document",
        "eject_s": "float: how long routing passes over a replica that was not there",
    },
    "keys": {
        "<sha256 of the key>": {
            "tenant_id": "str",
            "tenant": "str: the tenant's slug",
            "expires_at": "float | null: unix time",
            "models": "[str] | null: the key's scope (null: every model granted to the tenant)",
            "rank": "int: 0 critical, 1 standard, 2 batch",
            "triton_priority": "int: Triton priority level sent for models with >= 3 levels",
            "rate": "int: requests a second (0: no limit)",
            "burst": "int",
            "daily": "int: requests a UTC day (0: no quota)",
            "tokens_per_minute": "int: output tokens the tenant's streams may generate a minute (0: no limit)",
            "max_tokens": "int: the most max_tokens one request may ask for (0: no cap)",
        }
    },
    "grants": {"<tenant_id>": "[str]: models granted"},
    "permitted": {"<tenant_id>": "[str]: nodes the residency policy permits"},
    "routes": {"<model>": [{"node": "str", "address": "str", "version": "str", "tenant": "str | null"}]},
    "weights": {"<model>": {"<version>": "int: percent of unpinned traffic"}},
    "priority_levels": {"<model>": "int"},
    "cached_models": "[str]: models with the exact response cache",
    "semantic_models": "[str]: models with the semantic cache (the Python plane's)",
    "cache_tenants": "[str]: tenants whose data the policy lets the gateway cache here",
    "low_headroom": "[str]: nodes whose GPU memory is nearly full (limits do not grow)",
    "generative": {
        "<model>": {
            "slots": "int: streams one replica takes at once (max_num_seqs × ENGINE_QUEUE_FACTOR)",
            "context": "int: max_model_len (what max_tokens null reserves)",
        }
    },
    "engine_full": "[[address, model]]: replicas whose engine last reported no room (a limit of one stream)",
}

# The front stops answering from a document nobody rewrites: stale after this many refresh
# periods since the last document it actually loaded (and never sooner than the floor).
STALE_AFTER_REFRESHES = 5
STALE_AFTER_MIN_S = 5.0

# --- admission (admission.py, native/admission.cc) ------------------------------------------
CLASS_NAMES = ("critical", "standard", "batch")  # by rank
RANK = {name: rank for rank, name in enumerate(CLASS_NAMES)}
DEFAULT_RANK = RANK["standard"]
# A class may use a replica while its in-flight count is below limit × SHARE[rank].
SHARE = (1.0, 0.85, 0.6)

LIMIT_MIN = 2.0
LIMIT_TOLERANCE = 2.0  # answers may take this many times the baseline before the limit falls
LIMIT_SLACK_S = 0.002  # sub-millisecond baselines are mostly the gateway's own noise
LIMIT_SMOOTHING = 0.05
LIMIT_LATENCY_SMOOTHING = 0.1
LIMIT_DRIFT_S = 60.0  # time constant of the baseline's rise
LIMIT_OVERLOAD_FACTOR = 0.5  # the target when a replica reports overload
LIMIT_GRADIENT_FLOOR = 0.5
LIMIT_USED_FRACTION = 0.5  # the limit grows only while at least this much of it is in use
COST_DEFAULT_BASELINE_S = 0.001  # a replica's cost before it has a baseline
HINT_DEFAULT_BASELINE_S = 0.01
HINT_FACTOR = 4  # retry hint: this many answers' time on the least loaded replica
HINT_MIN_MS = 10

# --- retries (server.py _send, native/call.cc sent) -----------------------------------------
ATTEMPTS = 2  # the first send and one retry, only when the replica was not there
REPLICA_MISSING = ("UNAVAILABLE", "NOT_FOUND")  # Triton down, or up without the model
OVERLOADED = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")  # teach the limiter to back off

# gRPC status names by code (what the metrics label and the statistics count).
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip

# --- refusals: (status, text); {names} are filled by both planes alike -----------------------
REFUSALS = {
    "no_key": ("UNAUTHENTICATED", "missing API key: send 'authorization: Bearer <key>'"),
    "bad_key": ("UNAUTHENTICATED", "invalid, expired or revoked API key"),
    "no_model_name": ("INVALID_ARGUMENT", "model_name is required"),
    "not_granted": ("NOT_FOUND", "model '{model}' is not available to this API key"),
    "no_such_version": ("NOT_FOUND", "model '{model}' has no live version '{version}'"),
    "no_replica": ("UNAVAILABLE", "model '{model}' has no live replica right now; retry later"),
    "no_replica_for_key": ("UNAVAILABLE", "model '{model}' has no live replica for this API key; retry later"),
    "residency": (
        "FAILED_PRECONDITION",
        "the residency policy permits no live replica of model '{model}' for this tenant: {reason}",
    ),
    "over_quota": ("RESOURCE_EXHAUSTED", "tenant '{tenant}' used its daily quota of {daily} requests"),
    "over_rate": (
        "RESOURCE_EXHAUSTED",
        "tenant '{tenant}' is over its rate limit of {rate} requests/s; retry in {retry_ms} ms",
    ),
    "queue_full": ("RESOURCE_EXHAUSTED", "model '{model}' is overloaded and its queue is full; retry later"),
    "evicted": (
        "RESOURCE_EXHAUSTED",
        "model '{model}' is overloaded: a {priority} request was shed for higher-priority traffic",
    ),
    "queue_wait": ("RESOURCE_EXHAUSTED", "model '{model}' is overloaded: no replica slot within {wait_s} s; retry later"),
    "expired_in_queue": (
        "DEADLINE_EXCEEDED",
        "the request's deadline passed while it waited for model '{model}'; it was not sent",
    ),
    "expired_before_send": ("DEADLINE_EXCEEDED", "the request's deadline passed before it was sent"),
    "not_loaded": ("UNAVAILABLE", "model '{model}' is not loaded on its replicas right now; retry later"),
    "unreachable": ("UNAVAILABLE", "no replica is reachable right now; retry later"),
    "cancelled": ("CANCELLED", "the client cancelled the request"),
    "upstream_error": ("UNKNOWN", "upstream error"),  # a replica's error without a message
    "waking": ("DEADLINE_EXCEEDED", "model '{model}' was loading after idle and not ready before the deadline"),
    "stream_one_version": ("INVALID_ARGUMENT", "a stream serves one model version; open another stream"),
    "not_a_message": ("INVALID_ARGUMENT", "request is not a valid {what} message"),
    # Generative models' streams (gateway/tokens.py, native/tokens.cc).
    "over_tokens": (
        "RESOURCE_EXHAUSTED",
        "tenant '{tenant}' is over its {tpm} output tokens a minute; retry in {retry_ms} ms",
    ),
    "max_tokens_over": ("INVALID_ARGUMENT", "max_tokens {asked} is more than tenant '{tenant}' may ask for ({limit})"),
    "bad_sampling": ("INVALID_ARGUMENT", "sampling_parameters must be a JSON object with an integer max_tokens: {why}"),
}
# The trailing metadata key of a RESOURCE_EXHAUSTED refusal's retry hint (milliseconds).
RETRY_AFTER_HEADER = "retry-after-ms"

# The OpenAI-compatible HTTP API (gateway/openai_api.py): a refusal's HTTP status, and the
# error type OpenAI's clients expect for it.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "FAILED_PRECONDITION": 403,
    "NOT_FOUND": 404, "CANCELLED": 499, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
HTTP_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}  # fmt: skip
EMBEDDINGS_MAX_INPUTS = 32  # the embedder's max batch size


def refusal(name: str, **fields: object) -> tuple[str, str]:
    """(status name, text) of a refusal, its fields filled in. Numbers are written as
    the C++ side writes them (`number`), so both planes answer the very same text."""
    status, template = REFUSALS[name]
    return status, template.format(**{k: number(v) if isinstance(v, float) else v for k, v in fields.items()})


def number(value: float) -> str:
    """A float in a text: %g (six significant digits), as C++ streams write it."""
    return f"{value:g}"


# --- Redis keyspace ------------------------------------------------------------------------
# Per model version and second: requests, errors, summed ms, latency buckets (rollout gates).
KEY_VSTATS = "{instance}:vstats:{model}:{version}:{second}"
VSTATS_FIELDS = ("n", "err", "ms")  # then b0 … b<len(STATS_BUCKETS_MS)>
# Generative streams' decoding in the same hash: output tokens after each request's first, and the
# seconds they took (the tokens/s gate).
VSTATS_DECODE_FIELDS = ("dtok", "dsec")
VSTATS_KEEP_S = 3600
# When a model was last answered (scale to zero).
KEY_LAST_REQUEST = "{instance}:last-request:{model}"
LAST_REQUEST_KEEP_S = 7 * 86400
# Per (tenant, model) and minute, fields "<tenant>|<model>|<name>": the console's charts.
KEY_TRAFFIC = "{instance}:traffic:{minute}"
TRAFFIC_FIELD = "{tenant}|{model}|{name}"
# (streams, ttfr, sresp, ssec: streams that answered, their summed ms to first response, responses
# and seconds; otok, dtok, dsec: a generative stream's output tokens, and those after each
# request's first with the seconds they took.)
TRAFFIC_FIELDS = ("n", "err", "ms", "queued", "qms", "hit", "miss", "streams", "ttfr", "sresp", "ssec",
                  "otok", "dtok", "dsec")  # fmt: skip
TRAFFIC_KEEP_S = 3 * 3600
# Both planes add what they counted to these keys every FLUSH_S.
FLUSH_S = 0.25
# Rate limits and daily quotas (QUOTA_SCRIPT's KEYS[1] and KEYS[2]).
KEY_QUOTA_BUCKET = "{instance}:quota:bucket:{tenant}"
KEY_QUOTA_DAY = "{instance}:quota:day:{tenant}:"  # QUOTA_SCRIPT appends the UTC day number
# The exact response cache: scoped by tenant, model and answering version; digest: sha256 of
# the request's bytes without its fields 2 (version) and 3 (id) (wire.py content_of).
KEY_CACHE = "{instance}:cache:{tenant}:{model}:{version}:{digest}"

# Upper bounds of the statistics' latency buckets in milliseconds (the last bucket is open).
STATS_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000)
# Prometheus latency histograms' bounds in seconds.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1,
                     2.5, 5, 10)  # fmt: skip

# KEYS[1] bucket hash, KEYS[2] day counter prefix; ARGV rate, burst, daily quota.
# Returns {allowed (1/0), retry_after_ms, reason (0 ok, 1 rate, 2 quota)}. The token bucket is
# refilled by Redis's own clock, so processes and machines that disagree on time share it.
QUOTA_SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if quota > 0 then
  local day = KEYS[2] .. math.floor(t / 86400)
  local used = tonumber(redis.call('GET', day) or '0')
  if used >= quota then
    return {0, math.floor((86400 - (t % 86400)) * 1000), 2}
  end
end
if rate > 0 then
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or t
  tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', t)
    redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
    return {0, math.ceil((1 - tokens) / rate * 1000), 1}
  end
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ts', t)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
end
if quota > 0 then
  local day = KEYS[2] .. math.floor(t / 86400)
  redis.call('INCR', day)
  redis.call('EXPIRE', day, 2 * 86400)
end
return {1, 0, 0}
"""
QUOTA_REASONS = ("", "rate", "quota")  # by the script's reason code

# Output tokens a tenant's streams may generate in a minute (TOKENS_SCRIPT's KEYS[1]; the
# script appends the minute number). What vLLM generates when a request names no max_tokens.
KEY_TOKENS_MINUTE = "{instance}:tokens:{tenant}:"
# A generative replica takes its engine's max_num_seqs × this many streams at once (as many
# waiting in the engine as it runs: vLLM admits them as sequences finish); more wait in the
# gateway's queue, where priorities and deadlines still apply.
ENGINE_QUEUE_FACTOR = 2
# Admission from the engine's headroom (gateway/engines.py): a generative replica whose engine
# reports at least this share of its KV cache in use, or as many requests waiting as it runs at
# most, takes no new stream until it has room again (read from Triton's metrics every
# ENGINE_POLL_S; the gateway sheds or queues before the engine preempts).
KV_HIGH_WATERMARK = 0.9
ENGINE_POLL_S = 1.0
DEFAULT_MAX_TOKENS = 16
# KEYS[1] minute counter prefix; ARGV limit, tokens to reserve. Reserves them in the current
# minute (Redis's clock) unless that would pass the limit. Returns {allowed (1/0),
# retry_after_ms (to the next minute), minute}. The gateway gives back what a stream did not use.
TOKENS_SCRIPT = """
local now = redis.call('TIME')
local s = tonumber(now[1])
local minute = math.floor(s / 60)
local key = KEYS[1] .. minute
local limit, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local used = tonumber(redis.call('GET', key) or '0')
if used + want > limit then
  return {0, (60 - (s % 60)) * 1000 - math.floor(tonumber(now[2]) / 1000), minute}
end
redis.call('INCRBY', key, want)
redis.call('EXPIRE', key, 180)
return {1, 0, minute}
"""
# KEYS[1] one minute's counter; ARGV tokens reserved and not generated. Gives them back only while
# the counter exists: a stream that outlived its reservation's minute by the counter's lifetime
# finds it expired, and DECRBY would make it again, negative and without an expiry.
GIVE_BACK_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return 0
"""

# --- Prometheus metrics both planes expose (the front adds plane="native") --------------------
METRICS = {
    "requests": ("gateway_requests", "Inference requests answered, by tenant, model and gRPC status"),
    "latency": ("gateway_request_seconds", "Time from arrival to answer of inference requests"),
    "queue_time": ("gateway_queue_seconds", "Time a request waited in the gateway for a replica slot"),
    "inflight": ("gateway_inflight", "Requests sent to a replica and not yet answered"),
    "limit": ("gateway_concurrency_limit", "A replica's adaptive concurrency limit, per gateway process"),
    "shed": ("gateway_shed", "Requests refused with RESOURCE_EXHAUSTED (overload or quota)"),
    "retried": (
        "gateway_retried",
        "Requests retried after their replica was not there (UNAVAILABLE, or NOT_FOUND from a Triton without the model)",
    ),
    "cache": ("gateway_cache_lookups", "Response-cache lookups"),
}
# Streams of generative models (gateway/metrics.py; the front adds plane="native").
STREAM_METRICS = {
    "ttft": ("gateway_time_to_first_token_seconds", "Time from a generative request's arrival to its first token"),
    "inter_token": ("gateway_inter_token_seconds", "Time between the token chunks of a generative stream"),
    "output_tokens": ("gateway_output_tokens", "Tokens generated, by tenant, model and version"),
    "input_tokens": ("gateway_input_tokens", "Prompt tokens of generative requests, by tenant, model and version"),
    "engine_kv": ("gateway_engine_kv_cache_usage", "KV-cache share in use that a replica's engine last reported"),
    "engine_full": ("gateway_engine_full", "1 while a replica's engine has no room for a new stream"),
}


# --- the C++ header ---------------------------------------------------------------------------
def _cpp_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid C++ narrow string literal here


def _cpp_doubles(values: tuple[float, ...]) -> str:
    return "{" + ", ".join(repr(float(v)) for v in values) + "}"


def _cpp_strings(values: tuple[str, ...]) -> str:
    return "{" + ", ".join(_cpp_string(v) for v in values) + "}"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def cpp_header() -> str:
    """The native front's copy of this contract (native/contract.h is generated from it)."""
    lines = [
        "// Generated from appliance/gateway/contract.py (`python3 appliance/gateway/contract.py --cpp`).",
        "// Do not edit: change the contract, and both planes follow.",
        "#pragma once",
        "#include <array>",
        "#include <string_view>",
        "#include <utility>",
        "",
        "namespace contract {",
        f"inline constexpr int kSnapshotVersion = {SNAPSHOT_VERSION};",
        f"inline constexpr double kStaleAfterRefreshes = {float(STALE_AFTER_REFRESHES)!r};",
        f"inline constexpr double kStaleAfterMinS = {STALE_AFTER_MIN_S!r};",
        "",
        f"inline constexpr std::array<std::string_view, {len(CLASS_NAMES)}> kClassNames = {_cpp_strings(CLASS_NAMES)};",
        f"inline constexpr int kDefaultRank = {DEFAULT_RANK};",
        f"inline constexpr std::array<double, {len(SHARE)}> kShare = {_cpp_doubles(SHARE)};",
    ]
    for name in ("LIMIT_MIN", "LIMIT_TOLERANCE", "LIMIT_SLACK_S", "LIMIT_SMOOTHING", "LIMIT_LATENCY_SMOOTHING",
                 "LIMIT_DRIFT_S", "LIMIT_OVERLOAD_FACTOR", "LIMIT_GRADIENT_FLOOR", "LIMIT_USED_FRACTION",
                 "COST_DEFAULT_BASELINE_S", "HINT_DEFAULT_BASELINE_S"):  # fmt: skip
        lines.append(f"inline constexpr double k{_camel(name)} = {float(globals()[name])!r};")
    lines += [
        f"inline constexpr int kHintFactor = {HINT_FACTOR};",
        f"inline constexpr int kHintMinMs = {HINT_MIN_MS};",
        "",
        f"inline constexpr int kAttempts = {ATTEMPTS};",
        f"inline constexpr std::array<std::string_view, {len(STATUS_NAMES)}> kStatusNames = {_cpp_strings(STATUS_NAMES)};",
        f"inline constexpr std::array<std::string_view, {len(REPLICA_MISSING)}> kReplicaMissing = "
        f"{_cpp_strings(REPLICA_MISSING)};",
        f"inline constexpr std::array<std::string_view, {len(OVERLOADED)}> kOverloaded = {_cpp_strings(OVERLOADED)};",
        f"inline constexpr std::string_view kRetryAfterHeader = {_cpp_string(RETRY_AFTER_HEADER)};",
        "",
        "struct Refusal {",
        "  std::string_view status;",
        "  std::string_view text;  // {names} filled by fill() (text.h)",
        "};",
        "namespace refusal {",
    ]
    for name, (status, text) in REFUSALS.items():
        lines.append(f"inline constexpr Refusal k{_camel(name)} = {{{_cpp_string(status)}, {_cpp_string(text)}}};")
    lines.append(f"inline constexpr std::array<std::pair<std::string_view, Refusal>, {len(REFUSALS)}> kAll = {{{{")
    lines += [f"    {{{_cpp_string(name)}, k{_camel(name)}}}," for name in REFUSALS]
    lines.append("}};")
    lines += [
        "}  // namespace refusal",
        "",
        f"inline constexpr std::string_view kKeyVstats = {_cpp_string(KEY_VSTATS)};",
        f"inline constexpr std::array<std::string_view, {len(VSTATS_FIELDS)}> kVstatsFields = {_cpp_strings(VSTATS_FIELDS)};",
        f"inline constexpr int kVstatsKeepS = {VSTATS_KEEP_S};",
        f"inline constexpr std::string_view kKeyLastRequest = {_cpp_string(KEY_LAST_REQUEST)};",
        f"inline constexpr int kLastRequestKeepS = {LAST_REQUEST_KEEP_S};",
        f"inline constexpr std::string_view kKeyTraffic = {_cpp_string(KEY_TRAFFIC)};",
        f"inline constexpr std::string_view kTrafficField = {_cpp_string(TRAFFIC_FIELD)};",
        f"inline constexpr std::array<std::string_view, {len(TRAFFIC_FIELDS)}> kTrafficFields = "
        f"{_cpp_strings(TRAFFIC_FIELDS)};",
        f"inline constexpr int kTrafficKeepS = {TRAFFIC_KEEP_S};",
        f"inline constexpr double kFlushS = {FLUSH_S!r};",
        f"inline constexpr std::string_view kKeyQuotaBucket = {_cpp_string(KEY_QUOTA_BUCKET)};",
        f"inline constexpr std::string_view kKeyQuotaDay = {_cpp_string(KEY_QUOTA_DAY)};",
        f"inline constexpr std::string_view kKeyCache = {_cpp_string(KEY_CACHE)};",
        f"inline constexpr std::array<double, {len(STATS_BUCKETS_MS)}> kStatsBucketsMs = {_cpp_doubles(STATS_BUCKETS_MS)};",
        f"inline constexpr std::array<double, {len(LATENCY_BUCKETS_S)}> kLatencyBucketsS = "
        f"{_cpp_doubles(LATENCY_BUCKETS_S)};",
        f"inline constexpr std::string_view kQuotaScript = {_cpp_string(QUOTA_SCRIPT)};",
        "",
        f"inline constexpr std::string_view kKeyTokensMinute = {_cpp_string(KEY_TOKENS_MINUTE)};",
        f"inline constexpr std::string_view kTokensScript = {_cpp_string(TOKENS_SCRIPT)};",
        f"inline constexpr std::string_view kGiveBackScript = {_cpp_string(GIVE_BACK_SCRIPT)};",
        f"inline constexpr int kDefaultMaxTokens = {DEFAULT_MAX_TOKENS};",
        f"inline constexpr std::array<std::string_view, {len(VSTATS_DECODE_FIELDS)}> kVstatsDecodeFields = "
        f"{_cpp_strings(VSTATS_DECODE_FIELDS)};",
        "",
    ]
    for name, (metric, help_text) in {**METRICS, **STREAM_METRICS}.items():
        lines.append(f"inline constexpr std::string_view kMetric{_camel(name)} = {_cpp_string(metric)};")
        lines.append(f"inline constexpr std::string_view kMetric{_camel(name)}Help = {_cpp_string(help_text)};")
    lines += ["}  // namespace contract", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--cpp"]:
        sys.exit("usage: python3 appliance/gateway/contract.py --cpp > contract.h")
    sys.stdout.write(cpp_header())
