"""The benchmark's own Kafka and SecantusDB, started with deploy/local/infra.py.

They run on ports and a run directory of their own (`.run/bench`, Kafka 49092/49093,
MongoDB-wire 47217; `BENCH_PORT_OFFSET` moves them), so a bench never shares a broker with
`make run` or the tests. Each run starts from empty stores, so runs are comparable; the
logs stay under the run directory until the next run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INFRA_PY = REPO / "deploy" / "local" / "infra.py"
COMPONENTS = ("kafka", "mongo")  # Dovecot and SMTP are not on the measured path
_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
DEFAULT_PORTS = {
    "KAFKA": 49092 + _OFFSET,
    "KAFKA_CONTROLLER": 49093 + _OFFSET,
    "MONGO": 47217 + _OFFSET,
}


@dataclass
class BenchInfra:
    run_dir: Path = REPO / ".run" / "bench"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # A MongoDB to measure instead of the local SecantusDB (e.g. a real replica set).
    external_mongodb_uri: str | None = None
    started: bool = False

    @property
    def components(self) -> tuple[str, ...]:
        return ("kafka",) if self.external_mongodb_uri else COMPONENTS

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.ports['KAFKA']}"

    @property
    def mongodb_uri(self) -> str:
        return self.external_mongodb_uri or f"mongodb://127.0.0.1:{self.ports['MONGO']}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DESKSTREAM_RUN_DIR": str(self.run_dir)}
        env.update({f"DESKSTREAM_{name}_PORT": str(port) for name, port in self.ports.items()})
        return env

    def _infra(self, action: str) -> None:
        subprocess.run(
            [sys.executable, str(INFRA_PY), action, *self.components], env=self.env(), check=True
        )

    def up(self) -> None:
        # A bench that was killed hard may have left its servers running: stop them, then
        # start from empty data directories.
        self._infra("down")
        for name in self.components:
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        shutil.rmtree(self.run_dir / "logs", ignore_errors=True)
        self.started = True
        self._infra("up")

    def down(self) -> None:
        if self.started:
            self._infra("down")
            self.started = False

    def pid(self, component: str) -> int | None:
        """The server process of a component (for CPU accounting); None if not ours."""
        if component not in self.components:
            return None
        try:
            return int((self.run_dir / component / "pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
