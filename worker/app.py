"""The Celery worker app: the producer's app plus the tasks and the in-process services."""

from __future__ import annotations

import functools
import logging
import os
import signal
from typing import Any

from celery import Celery, signals

from jobs.lifeline import watch_parent
from jobs.queue import get_celery, resolve_redis_url
from jobs.settings import get_settings

log = logging.getLogger(__name__)

_sweeper: Any = None
_notifier: Any = None
_interactive: Any = None
# How long shutdown waits for interactive messages in progress to be stored and acked.
INTERACTIVE_DRAIN_S = 15


@functools.cache
def get_app() -> Celery:
    """The app `promptq worker` runs: tasks registered, sweeper started with the worker."""
    app = get_celery()
    app.conf.update(worker_pool="threads")
    import worker.tasks  # noqa: F401 - registers the task on the app

    signals.worker_ready.connect(_start_sweeper, weak=False)
    signals.worker_shutting_down.connect(_drain, weak=False)
    signals.worker_shutdown.connect(_stop, weak=False)
    return app


def _start_sweeper(**_: Any) -> None:
    global _sweeper, _notifier
    from worker.notifier import Notifier
    from worker.sweeper import Sweeper

    _sweeper = Sweeper(get_settings(), resolve_redis_url())
    _sweeper.start()
    _notifier = Notifier(get_settings(), resolve_redis_url())
    _notifier.start()
    _start_interactive()
    # started by `promptq run`: stop (draining, as on SIGTERM) if it dies without stopping us
    watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))


def _start_interactive() -> None:
    global _interactive
    from worker.interactive import InteractiveConsumer

    _interactive = InteractiveConsumer(resolve_redis_url())
    _interactive.start()


def _drain(**_: Any) -> None:
    # before Celery waits for running tasks: let them end fast by sending nothing new
    from worker.runtime import drain_runtime

    drain_runtime()
    if _interactive is not None:
        _interactive.stop()  # takes nothing new; acks what it holds once it is stored


def _stop(**_: Any) -> None:
    from worker.runtime import stop_runtime

    if _sweeper is not None:
        _sweeper.stop()
    if _notifier is not None:
        _notifier.stop()
    if _interactive is not None:
        _interactive.join(INTERACTIVE_DRAIN_S)
    try:
        stop_runtime()
    except Exception as exc:  # noqa: BLE001 - shutting down regardless
        log.warning("runtime stop: %s", exc)
