"""The one Celery task: run a message's request ids on this process's runtime."""

from __future__ import annotations

from celery import shared_task

from jobs.constants import EXECUTE_TASK
from worker.runtime import get_runtime


@shared_task(name=EXECUTE_TASK, ignore_result=True)
def execute(ids: list[str]) -> None:
    """Claim, call, store; the message is acked (late) once every outcome is stored."""
    get_runtime().run(ids)
