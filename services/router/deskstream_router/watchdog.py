"""Exit the router when its Faust worker stopped serving, so the supervisor restarts it.

After the Kafka broker was away for 30 seconds, a Faust 0.15.3 worker was seen with its
web server gone and both event loops idle: no error logged, no record consumed, the
process alive. An orchestrator's liveness probe would restart it; docker compose would
not (it restarts only what exits). So a thread, independent of the event loops, asks the
router's own `/healthz`; after `failures` misses in a row (once it had answered) the
process exits with status 70 and the supervisor (compose `restart:`, Kubernetes) starts a
fresh worker, which resumes from the committed offsets and the tables' changelogs.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

EXIT_STATUS = 70  # EX_SOFTWARE


def _answers(port: int, timeout: float) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_watchdog(port: int, *, every_s: float = 10.0, failures: int = 3) -> threading.Thread:
    def watch() -> None:
        answered, missed = False, 0
        while True:
            time.sleep(every_s)
            if _answers(port, timeout=every_s / 2):
                answered, missed = True, 0
                continue
            if not answered:
                continue  # still starting
            missed += 1
            if missed >= failures:
                log.critical(
                    "the worker stopped serving; exiting so that it is restarted",
                    extra={"missed_health_checks": missed},
                )
                logging.shutdown()
                os._exit(EXIT_STATUS)

    thread = threading.Thread(target=watch, name="router-watchdog", daemon=True)
    thread.start()
    return thread
