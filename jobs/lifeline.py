"""A child process that stops when the process that started it is gone.

`promptq run` starts its workers and simulator in sessions of their own (so Ctrl-C
reaches `run` alone, which stops them in order). If `run` itself is killed, nothing
would stop them: each watches the pid in PROMPTQ_PARENT_PID and stops itself when it
is no longer its parent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PARENT_PID_ENV = "PROMPTQ_PARENT_PID"
CHECK_INTERVAL_S = 1.0


def watch_parent(stop: Callable[[], None], interval_s: float = CHECK_INTERVAL_S) -> bool:
    """Call `stop` once the parent named in PROMPTQ_PARENT_PID has gone; False if none is."""
    text = os.environ.get(PARENT_PID_ENV)
    if not text:
        return False
    parent = int(text)

    def watch() -> None:
        while os.getppid() == parent:  # re-parented once it died
            threading.Event().wait(interval_s)
        log.warning("the process that started this one (pid %d) is gone; stopping", parent)
        stop()

    threading.Thread(target=watch, name="promptq-lifeline", daemon=True).start()
    return True
