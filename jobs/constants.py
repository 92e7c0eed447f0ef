"""Names shared by the producer and the workers: queues, task names and Redis keys."""

from __future__ import annotations

# Celery routing; messages carry request ids only, sent by task name (jobs never imports tasks).
QUEUE = "promptq"
EXECUTE_TASK = "promptq.execute"

# Every Redis key promptq writes (besides Celery's own) starts with this prefix.
REDIS_PREFIX = "promptq:"
CONCURRENCY_KEY = REDIS_PREFIX + "concurrency:"  # + upstream scope: ZSET of leases
PAUSE_KEY = REDIS_PREFIX + "paused_until:"  # + upstream scope: epoch ms
RPM_KEY = REDIS_PREFIX + "rpm:"  # + scope
TPM_KEY = REDIS_PREFIX + "tpm:"  # + scope: ZSET; + ":sum" its total
SWEEPER_LOCK_KEY = REDIS_PREFIX + "sweeper:lock"
DB_DOWN_KEY = REDIS_PREFIX + "sweeper:db_down"  # set while leases must not be taken back
ADAPTIVE_KEY = REDIS_PREFIX + "adaptive:"  # + scope: effective concurrency

# Batches' endpoints and the input lines' urls promptq accepts.
ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings")
COMPLETION_WINDOWS_S = {"24h": 86_400, "1h": 3_600, "10m": 600}
