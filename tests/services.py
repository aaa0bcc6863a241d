"""Start deskstream services through their real entry points for a test, and wait for them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

BIN = Path(sys.executable).parent
ENV_PREFIX = {
    "ticket-api": "TICKET_API",
    "ingest-chat": "INGEST_CHAT",
    "router": "ROUTER",
    "ingest-email": "INGEST_EMAIL",
    "ingest-social": "INGEST_SOCIAL",
}
ALL = tuple(ENV_PREFIX)


def start_service(name: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(BIN / f"deskstream-{name}")],
            env={**env, f"{ENV_PREFIX[name]}_HTTP_PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,  # whatever a service writes beside itself stays with the test
        )


def readyz(port: int) -> int:
    """The HTTP status of /readyz, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_status(ports: Iterable[int], status: int, timeout: float) -> float:
    """Seconds until every port's /readyz answered `status`; AssertionError after timeout."""
    started = time.monotonic()
    pending = set(ports)
    while pending:
        pending = {p for p in pending if readyz(p) != status}
        if not pending:
            break
        if time.monotonic() - started > timeout:
            raise AssertionError(f"/readyz not {status} within {timeout}s on ports {pending}")
        time.sleep(0.25)
    return time.monotonic() - started


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> list[int | None]:
    procs = list(procs)
    codes: list[int | None] = []
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes
