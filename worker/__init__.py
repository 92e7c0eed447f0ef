"""promptq's execution side: the Celery app, tasks, upstream client, limits, retries, sweeper."""
