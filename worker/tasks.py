"""The one Celery task: run a message's request ids on this process's runtime."""

from __future__ import annotations

from celery import Task, shared_task

from jobs.constants import EXECUTE_TASK
from worker.runtime import ClaimFailed, get_runtime

CLAIM_RETRY_S = 2


@shared_task(name=EXECUTE_TASK, ignore_result=True, bind=True, max_retries=None)
def execute(self: Task, ids: list[str]) -> None:
    """Claim, call, store; the message is acked (late) once every outcome is stored.

    If the database cannot be reached to claim them, the ids are sent again shortly
    (a short countdown, well inside Redis' visibility timeout) instead of waiting for the
    sweeper to notice them.
    """
    try:
        get_runtime().run(ids)
    except ClaimFailed as exc:
        raise self.retry(countdown=CLAIM_RETRY_S, exc=exc) from exc
