"""What the fleet's shared limits look like right now, read from Redis by key name."""

from __future__ import annotations

import time
from typing import Any

import redis

from jobs.constants import ADAPTIVE_KEY, CONCURRENCY_KEY, PAUSE_KEY
from jobs.settings import Settings


def limits_view(settings: Settings, redis_url: str) -> dict[str, Any]:
    """In flight, the effective (adaptive) concurrency under the hard cap, and any 429 pause."""
    scope = settings.upstream_scope
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        now_ms = int(time.time() * 1000)
        in_flight = int(client.zcount(CONCURRENCY_KEY + scope, now_ms, "+inf"))
        adaptive = client.get(ADAPTIVE_KEY + scope)
        paused_until = client.get(PAUSE_KEY + scope)
        models = [
            _model_view(client, f"{scope}|{model}", model, limits["max_concurrency"], now_ms)
            for model, limits in sorted(settings.model_limits.items())
            if limits.get("max_concurrency")
        ]
    finally:
        client.close()
    effective = min(settings.max_concurrency, float(adaptive)) if adaptive else None
    return {
        "upstream": scope,
        "in_flight": in_flight,
        "max_concurrency": settings.max_concurrency,
        "effective_concurrency": round(effective, 1) if effective else settings.max_concurrency,
        "paused_for_s": max(0.0, (int(paused_until) - now_ms) / 1000) if paused_until else 0.0,
        "models": models,  # models with a concurrency cap of their own (PROMPTQ_MODEL_LIMITS)
    }


def _model_view(
    client: redis.Redis, scope: str, model: str, cap: int, now_ms: int
) -> dict[str, Any]:
    """A model's own cap, kept like the upstream's under the scope `upstream|model`."""
    adaptive = client.get(ADAPTIVE_KEY + scope)
    effective = min(cap, float(adaptive)) if adaptive else cap
    return {
        "model": model,
        "in_flight": int(client.zcount(CONCURRENCY_KEY + scope, now_ms, "+inf")),
        "max_concurrency": cap,
        "effective_concurrency": round(effective, 1),
    }
