"""Names shared by the producer and the workers: queues, task names and Redis keys."""

from __future__ import annotations

# Celery routing; messages carry request ids only, sent by task name (jobs never imports tasks).
QUEUE = "promptq"  # bulk work, taken by Celery's threads
INTERACTIVE_QUEUE = "promptq.interactive"  # taken by a consumer of its own in every worker
EXECUTE_TASK = "promptq.execute"

# Every Redis key promptq writes (besides Celery's own) starts with this prefix.
REDIS_PREFIX = "promptq:"
CONCURRENCY_KEY = REDIS_PREFIX + "concurrency:"  # + upstream scope: ZSET of leases
PAUSE_KEY = REDIS_PREFIX + "paused_until:"  # + upstream scope: epoch ms
RPM_KEY = REDIS_PREFIX + "rpm:"  # + scope
TPM_KEY = REDIS_PREFIX + "tpm:"  # + scope: ZSET; + ":sum" its total
SWEEPER_LOCK_KEY = REDIS_PREFIX + "sweeper:lock"
NOTIFIER_LOCK_KEY = REDIS_PREFIX + "notifier:lock"  # one process sends due webhooks per interval
DB_DOWN_KEY = REDIS_PREFIX + "sweeper:db_down"  # set while leases must not be taken back
ADAPTIVE_KEY = REDIS_PREFIX + "adaptive:"  # + scope: effective concurrency
INTERACTIVE_WAITING_KEY = REDIS_PREFIX + "interactive_waiting:"  # + scope: ZSET of waiters

# Batches' endpoints and the input lines' urls promptq accepts.
ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings")
COMPLETION_WINDOWS_S = {"24h": 86_400, "1h": 3_600, "10m": 600}

# Upstream call telemetry, written by workers and read by the API's `/metrics`. HASHes whose
# fields are JSON label lists, e.g. ["api.cometapi.com", "o1-mini", "ok"]: upstreams hold ":".
METRICS_KEY = REDIS_PREFIX + "metrics:"
METRICS_CALLS_KEY = METRICS_KEY + "calls"  # [upstream, model, outcome] -> calls
METRICS_RATE_LIMITED_KEY = METRICS_KEY + "rate_limited"  # [upstream, model] -> 429s
# [upstream, model, le] -> calls in that bucket alone (not cumulative; le: its upper bound)
METRICS_LATENCY_BUCKETS_KEY = METRICS_KEY + "latency_buckets"
METRICS_LATENCY_SUM_KEY = METRICS_KEY + "latency_sum_s"  # [upstream, model] -> seconds
# Upper bounds of the latency histogram's buckets (+Inf implied); reasoning calls run minutes.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# What `record_call` is told of a call.
CALL_OUTCOMES = ("ok", "rate_limited", "overloaded", "failed")
