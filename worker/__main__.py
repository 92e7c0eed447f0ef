"""`python -m worker`: what `promptq worker` runs (a Celery worker for this deployment)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from jobs.constants import QUEUE
from jobs.logs import configure_logging

DEFAULT_THREADS = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptq worker")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_THREADS,
        help="messages handled at once by this process (each holds several requests)",
    )
    parser.add_argument("--loglevel", default=os.environ.get("PROMPTQ_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    configure_logging(args.loglevel)  # PROMPTQ_LOG_FORMAT: text or json, secrets scrubbed

    # one line per upstream call drowns what matters; failures are logged by promptq itself
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from jobs.settings import get_settings
    from worker.app import get_app

    # the startup banner is printed, not logged: JSON logs must hold only JSON lines
    quiet = ["--quiet"] if get_settings().log_format == "json" else []
    get_app().worker_main(
        [
            "worker",
            *quiet,
            "--pool=threads",
            f"--concurrency={args.concurrency}",
            f"--queues={QUEUE}",
            f"--hostname=promptq-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
