"""Services started through their production entry points, plus the probes the bench reads.

Like tests/services.py: `deskstream-<name>` from the venv, settings only through the
environment, ready when `/readyz` answers 200. CPU seconds per process (psutil) and the
ticket-api's Prometheus counters are sampled around each measurement to show where the
time goes.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
ENV_PREFIX = {"ticket-api": "TICKET_API", "router": "ROUTER"}

# Every service process this bench started, so the outermost `finally` (Ctrl-C, a failed
# measurement) can stop whatever is still running.
RUNNING: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(name: str, env: dict[str, str], log: Path, cwd: Path) -> Service:
    """Start `deskstream-<name>` on a free port; its output goes to `log`."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(BIN / f"deskstream-{name}")],
            env={**env, f"{ENV_PREFIX[name]}_HTTP_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,  # Faust writes its data directory into the working directory
        )
    RUNNING.append(proc)
    return Service(name, port, proc, log)


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def wait_ready(services: Iterable[Service], timeout: float = 120) -> None:
    pending = list(services)
    deadline = time.monotonic() + timeout
    while pending:
        for s in pending:
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode}; see {s.log}")
        pending = [s for s in pending if readyz(s.port) != 200]
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise RuntimeError(f"not ready within {timeout:.0f}s: {names}")
        if pending:
            time.sleep(0.25)


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout`; only the processes this bench started."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc in RUNNING:
            RUNNING.remove(proc)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its reaped children; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def runqueue_seconds(pid: int | None) -> float:
    """Seconds the process's threads were runnable but waiting for a core (schedstat).

    High values mean the process was starved of CPU — by the bench's other processes or
    by whatever else runs on the machine — rather than waiting for I/O or for work.
    """
    if pid is None:
        return 0.0
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(stat.read_text().split()[1])
    return total / 1e9


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class CpuMeter:
    """Per named process between `start()` and `stop()`: CPU used and CPU waited for."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._cpu0: dict[str, float] = {}
        self._wait0: dict[str, float] = {}
        self._busy0 = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._wait0 = {name: runqueue_seconds(pid) for name, pid in self.pids.items()}
        self._busy0 = _machine_busy_seconds()

    def stop(self) -> dict[str, dict[str, float]]:
        """Shares of one core over the interval (1.0 = one core's worth).

        `cpu`: what each process used; `other` is what the rest of the machine used
        meanwhile (when it is high, the numbers are not comparable between runs).
        `runqueue_wait`: how long each process's threads waited for a core, summed.
        """
        wall = max(time.monotonic() - self._t0, 1e-9)
        cpu = {
            name: round((cpu_seconds(pid) - self._cpu0[name]) / wall, 3)
            for name, pid in self.pids.items()
        }
        busy = (_machine_busy_seconds() - self._busy0) / wall
        cpu["other"] = round(max(busy - sum(cpu.values()), 0.0), 3)
        wait = {
            name: round((runqueue_seconds(pid) - self._wait0[name]) / wall, 3)
            for name, pid in self.pids.items()
        }
        return {"cpu": cpu, "runqueue_wait": wait}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$")


def scrape(url: str, names: Iterable[str]) -> dict[str, float]:
    """Prometheus samples whose metric name is in `names`, keyed `name{labels}`."""
    wanted = set(names)
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in wanted:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out
