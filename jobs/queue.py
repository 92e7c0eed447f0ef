"""The message side of the contract: the Celery app's broker settings, and publishing ids.

Messages carry request ids only (JSON, never bodies, never pickle). The database is the
source of truth: a lost message costs a delay (the sweeper re-publishes), never a request.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from urllib.parse import unquote

from celery import Celery

from jobs.constants import EXECUTE_TASK, INTERACTIVE_QUEUE, QUEUE
from jobs.models import Priority
from jobs.settings import get_settings

# Longer than any wait a task may hold its message for (limits, a 600 s call, retries);
# a shorter one makes Redis redeliver messages still being worked on.
VISIBILITY_TIMEOUT_S = 4 * 3600


def resolve_redis_url() -> str:
    """PROMPTQ_REDIS_URL, or the embedded Redis in the data dir (started if needed)."""
    settings = get_settings()
    if settings.redis_url:
        return settings.redis_url
    from jobs.embedded import EmbeddedRedis

    return EmbeddedRedis(settings.resolved_data_dir).start()


def kombu_url(redis_url: str) -> str:
    """kombu spells a unix socket `redis+socket://`; redis-py spells it `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + unquote(redis_url.removeprefix("unix://"))
    return redis_url


def celery_config(redis_url: str) -> dict[str, object]:
    return {
        "broker_url": kombu_url(redis_url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_keepalive": True,
            "retry_on_timeout": True,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        # a SIGKILLed worker must not lose its message: ack only after the work is stored
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # task events on, so Flower (or `celery events`) can watch the fleet
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_heartbeat": 0,
    }


@functools.cache
def get_celery() -> Celery:
    """The Celery app, configured for this deployment's Redis; built once per process."""
    app = Celery("promptq", set_as_current=False)
    app.conf.update(celery_config(resolve_redis_url()))
    return app


def chunked(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(ids)
    while chunk := list(islice(it, size)):
        yield chunk


def queue_for(priority: str) -> str:
    """The broker queue of a priority: interactive work has its own, with its own consumer."""
    return INTERACTIVE_QUEUE if priority == Priority.INTERACTIVE else QUEUE


def publish(
    ids: Sequence[str], *, ids_per_message: int | None = None, priority: str = Priority.BULK
) -> int:
    """Send request ids to the workers, several per message; returns the messages sent."""
    if not ids:
        return 0
    app = get_celery()
    # interactive work goes one request per message: nothing waits behind a slow neighbour
    size = (
        1 if priority == Priority.INTERACTIVE else ids_per_message or get_settings().ids_per_message
    )
    sent = 0
    with app.producer_or_acquire() as producer:
        for chunk in chunked(ids, size):
            app.send_task(EXECUTE_TASK, args=[chunk], queue=queue_for(priority), producer=producer)
            sent += 1
    return sent


def queue_length() -> int:
    """Messages waiting in the broker, both queues (not those already taken by a worker)."""
    with get_celery().connection_for_write() as conn:
        client = conn.default_channel.client
        return int(client.llen(QUEUE)) + int(client.llen(INTERACTIVE_QUEUE))
