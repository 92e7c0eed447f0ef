"""The per-process engine: one asyncio loop that keeps many upstream calls in flight.

Celery's threads each hand a message's request ids to this loop and block until they are
stored, so late acks keep their meaning while one process holds hundreds of calls open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.models import utcnow
from jobs.queue import resolve_redis_url
from jobs.settings import Settings, get_settings
from worker import budget, store
from worker.errors import PermanentUpstreamError, RateLimitedError, RetryableUpstreamError
from worker.estimate import estimate_split
from worker.limits import Limits, ModelLimits
from worker.retry import RetryPolicy, backoff_s, next_delay_s
from worker.store import Claimed, Outcome
from worker.telemetry import CallCounter
from worker.upstream import UpstreamClient
from worker.usage import PriceTable, Usage
from worker.writer import GroupWriter

log = logging.getLogger(__name__)

# Failures of the services around a call (not of the call): the request goes back uncounted.
INFRASTRUCTURE_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


class ClaimFailed(Exception):
    """The database could not be reached to claim a message's requests."""


# Waits up to this long happen inside the worker; longer ones go to the database.
INLINE_RETRY_MAX_S = 5.0
# Answers that say the upstream is overloaded (with timeouts and dropped connections).
OVERLOAD_STATUSES = frozenset({429, 503, 504, 529})
DB_THREADS = 4
TELEMETRY_FLUSH_S = 1.0
REDIS_CONNECTIONS = 32


class Runtime:
    """Owns the loop thread, the upstream client, the limiter and the result writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = RetryPolicy(max_attempts=settings.max_attempts)
        self.prices = (
            PriceTable.from_file(settings.price_table)
            if settings.price_table
            else PriceTable.default()
        )
        self.db = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="promptq-db")
        self.loop = asyncio.new_event_loop()
        self.held: dict[str, int] = {}  # request id -> attempt, for lease renewal
        self.calls = CallCounter()  # for /metrics, flushed to Redis once a second
        self.draining = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="promptq-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._setup())
        self._ready.set()
        self.loop.run_forever()

    async def _setup(self) -> None:
        s = self.settings
        self.client = UpstreamClient(
            s.upstream_base_url,
            s.upstream_key,
            timeout_s=s.request_timeout_s,
            max_connections=max(s.max_concurrency, 16),
        )
        # blocking pool: a burst of calls waits for a connection instead of failing
        # retries: a Redis restart breaks every pooled connection once; without them the
        # first use of each fails, and an answer already paid for would be thrown away
        pool = BlockingConnectionPool.from_url(
            resolve_redis_url(),
            max_connections=REDIS_CONNECTIONS,
            timeout=None,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
        )
        self.redis = Redis(connection_pool=pool)
        self.limits = Limits(
            self.redis,
            s.upstream_scope,
            max_concurrency=s.max_concurrency,
            lease_s=s.lease_s,
            rpm=s.rpm,
            tpm=s.tpm,
            overrides={m: ModelLimits(**v) for m, v in s.model_limits.items()},
        )
        self.writer: GroupWriter[Outcome] = GroupWriter(store.record, self.db)
        self._heartbeat = asyncio.create_task(self._renew_forever())
        self._flusher = asyncio.create_task(self._flush_forever())

    # -- called from Celery's threads -------------------------------------------------

    def run(self, ids: list[str]) -> None:
        """Process these request ids; returns when every outcome is stored."""
        self.submit(ids).result()

    def submit(self, ids: list[str]) -> concurrent.futures.Future[None]:
        """Process these request ids; the future is done when every outcome is stored."""
        return asyncio.run_coroutine_threadsafe(self.process(ids), self.loop)

    def drain(self) -> None:
        """Shutting down: send no new calls; requests not yet sent go back to the queue."""
        self.draining = True

    def stop(self) -> None:
        """Give back what this process holds and close its connections."""
        if not self.loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        try:
            future.result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.db.shutdown(wait=False)

    # -- on the loop -----------------------------------------------------------------

    async def process(self, ids: list[str]) -> None:
        try:
            claimed = await self._db(store.claim, ids, self.settings.lease_s)
        except Exception as exc:
            raise ClaimFailed(str(exc)) from exc
        results = await asyncio.gather(*(self.execute(c) for c in claimed), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def execute(self, claimed: Claimed) -> None:
        current: Claimed | None = claimed
        while current is not None:
            self.held[current.id] = current.attempt
            try:
                try:
                    outcome = await self._attempt(current)
                except INFRASTRUCTURE_ERRORS as exc:  # Redis away: nothing was sent
                    log.warning(
                        "request %s not sent: %s; back to the queue",
                        current.id,
                        exc,
                        extra=_ids(current),
                    )
                    outcome = Outcome(current, "released")
                except Exception as exc:  # noqa: BLE001 - counted, so a bug cannot loop
                    log.warning("request %s: %s; will retry", current.id, exc, extra=_ids(current))
                    outcome = self._retry_later(current, f"worker error: {exc}")
                await self.writer.write(outcome)
            finally:
                self.held.pop(current.id, None)
            current = None
            if outcome.kind == "retry" and outcome.held and not self.draining:
                delay_s = (outcome.not_before - utcnow()).total_seconds()  # type: ignore[operator]
                await asyncio.sleep(max(0.0, delay_s))
                again = await self._db(store.claim, [claimed.id], self.settings.lease_s)
                current = again[0] if again else None

    async def _attempt(self, c: Claimed) -> Outcome:
        body = c.body.encode()
        prompt_tokens, answer_tokens = estimate_split(c.url, json.loads(body))
        estimate = prompt_tokens + answer_tokens
        if self.draining:
            return Outcome(c, "released")
        now = utcnow()
        if c.window is not None and not c.window.is_open(now):
            return Outcome(c, "deferred", not_before=c.window.next_open(now))
        try:
            async with self.limits.admit(c.model, estimate, c.priority) as admission:
                if self.draining:  # shutting down: only calls already sent may finish
                    await admission.failed()
                    return Outcome(c, "released")
                now = utcnow()
                if c.window is not None and not c.window.is_open(now):  # shut while it waited
                    await admission.failed()
                    return Outcome(c, "deferred", not_before=c.window.next_open(now))
                if c.budgeted:
                    # set aside while holding a slot: what is set aside is at most the cap's
                    # worth of calls, the ones about to be in flight
                    guess = Usage(
                        input_tokens=prompt_tokens,
                        output_tokens=answer_tokens,
                        total_tokens=estimate,
                    )
                    cost_usd = self.prices.cost_usd(c.model, guess)
                    why = await self._db(budget.reserve, c, cost_usd, estimate)
                    if why is not None:
                        await admission.failed()
                        log.info("request %s not sent: %s", c.id, why, extra=_ids(c))
                        return Outcome(c, "failed", error_code="budget_exceeded", error_message=why)
                sent_at = time.perf_counter()
                try:
                    answer = await self.client.call(c.url, body)
                except RateLimitedError as exc:
                    self._telemetry(c.model, sent_at, "rate_limited")
                    await admission.overloaded(exc.retry_after_s or self.policy.base_s)
                    raise
                except RetryableUpstreamError as exc:
                    if exc.status_code in OVERLOAD_STATUSES or exc.status_code is None:
                        self._telemetry(c.model, sent_at, "overloaded")
                        await admission.overloaded(None)
                    else:
                        self._telemetry(c.model, sent_at, "failed")
                        await admission.failed()
                    raise
                except PermanentUpstreamError:
                    self._telemetry(c.model, sent_at, "failed")
                    await admission.failed()
                    raise
                self._telemetry(c.model, sent_at, "ok")
                usage = answer.usage or Usage()
                try:
                    await admission.succeeded(usage.total_tokens if answer.usage else None)
                except Exception as exc:  # noqa: BLE001 - the answer is paid for: keep it
                    log.warning("limiter bookkeeping failed after an answer: %s", exc)
        except PermanentUpstreamError as exc:
            return self._failed(c, exc, exc.code or "upstream_error")
        except RetryableUpstreamError as exc:
            if c.attempt >= self.policy.max_attempts:
                return self._failed(c, exc, "max_attempts_exceeded")
            delay_s = next_delay_s(exc, c.attempt, self.policy)
            return Outcome(
                c,
                "retry",
                status_code=exc.status_code,
                error_code=exc.code or "retryable_error",
                error_message=exc.message,
                not_before=utcnow() + timedelta(seconds=delay_s),
                held=delay_s <= INLINE_RETRY_MAX_S,
            )
        return Outcome(
            c,
            "succeeded",
            status_code=answer.status_code,
            upstream_request_id=answer.request_id,
            response_body=json.dumps(answer.body, ensure_ascii=False, separators=(",", ":")),
            latency_ms=answer.latency_ms,
            usage=usage,
            cost_usd=self.prices.cost_usd(c.model, usage),
        )

    def _telemetry(self, model: str, sent_at: float, outcome: str) -> None:
        """Count the call for `/metrics` (in memory; `_flush_forever` sends the counts)."""
        latency_s = time.perf_counter() - sent_at
        self.calls.observe(self.settings.upstream_scope, model, latency_s, outcome)

    def _retry_later(self, c: Claimed, message: str) -> Outcome:
        delay_s = backoff_s(c.attempt, self.policy)
        return Outcome(
            c,
            "retry",
            error_code="worker_error",
            error_message=message,
            not_before=utcnow() + timedelta(seconds=delay_s),
            held=delay_s <= INLINE_RETRY_MAX_S,
        )

    def _failed(
        self, c: Claimed, exc: PermanentUpstreamError | RetryableUpstreamError, code: str
    ) -> Outcome:
        body = json.dumps(exc.body, ensure_ascii=False) if isinstance(exc.body, dict) else None
        return Outcome(
            c,
            "failed",
            status_code=exc.status_code,
            upstream_request_id=exc.request_id,
            response_body=body if exc.status_code else None,
            error_code=code,
            error_message=exc.message,
        )

    async def _db(self, fn, *args):
        return await self.loop.run_in_executor(self.db, fn, *args)

    async def _renew_forever(self) -> None:
        interval_s = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._db(store.renew, dict(self.held), self.settings.lease_s)
                await self.limits.renew()
            except Exception as exc:  # noqa: BLE001 - keep renewing; leases absorb a gap
                log.warning("lease renewal failed: %s", exc)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(TELEMETRY_FLUSH_S)
            await self.calls.flush(self.redis)  # never raises; keeps counts it could not send

    async def _close(self) -> None:
        self._heartbeat.cancel()
        self._flusher.cancel()
        await self.calls.flush(self.redis)
        held = dict(self.held)
        for task in asyncio.all_tasks(self.loop):
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await self._db(store.release, held)
        except Exception as exc:  # noqa: BLE001 - their leases will expire instead
            log.warning("could not release %d requests: %s", len(held), exc)
        await self.client.aclose()
        await self.redis.aclose()


def _ids(c: Claimed) -> dict[str, str]:
    """A log record's `extra`: the ids JSON logs carry."""
    return {"batch_id": c.batch_id, "request_id": c.id}


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (and rebuilt after a fork)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = Runtime(get_settings())
            _runtime_pid = os.getpid()
        return _runtime


def drain_runtime() -> None:
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.drain()


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.stop()
        _runtime = None
