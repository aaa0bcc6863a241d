"""`make run`: the local infrastructure, the topics and all five services, until Ctrl-C.

Starts what is not running yet (Kafka, SecantusDB, Dovecot, SMTP), creates the topics,
starts every service as a child process with its log under `<run dir>/logs/`, waits until
each one answers `/readyz`, and prints where they listen. Then it shows the desk at work:
a live view of every ticket event (`live.py`) and a demo (`demo.py`: the demo organisation,
a few mails into the desk's IMAP mailbox, a few portal requests); `DESKSTREAM_DEMO=0` skips
the demo, not the view. On Ctrl-C (SIGINT) or SIGTERM it stops the view, the services and
then the infrastructure it started itself, and exits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo
import infra
import live
from deskstream.topics import BY_NAME, Topics, ensure_topics

VENV_BIN = Path(sys.executable).parent
PORT_BASE = int(os.environ.get("DESKSTREAM_SERVICE_PORT_BASE", "8080"))
READY_TIMEOUT_S = 120
LIVE_READY_TIMEOUT_S = 30
ADMIN_KEY_NAME = "TICKET_API_ADMIN_API_KEY"


@dataclass(frozen=True)
class Service:
    name: str
    env_prefix: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


SERVICES = [
    Service("ticket-api", "TICKET_API", PORT_BASE),
    Service("ingest-chat", "INGEST_CHAT", PORT_BASE + 1),
    Service("router", "ROUTER", PORT_BASE + 2),
    Service("ingest-email", "INGEST_EMAIL", PORT_BASE + 3),
    Service("ingest-social", "INGEST_SOCIAL", PORT_BASE + 4),
]


class Stop(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, like KeyboardInterrupt, so that no `except
    Exception` on the way (the demo's failure reporting, readiness polls) swallows it."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def secrets_file() -> Path:
    path: Path = infra.RUN_DIR / "secrets.env"
    return path


def local_secrets() -> dict[str, str]:
    """Secrets of this local installation: made once, kept in the run dir (mode 600)."""
    path = secrets_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"TICKET_API_ADMIN_API_KEY={secrets.token_urlsafe(32)}\n")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def service_env(service: Service) -> dict[str, str]:
    return {
        **os.environ,
        **infra.env_lines(),
        # The demo's own secrets (its portal user's key) are nothing a service needs.
        **{k: v for k, v in local_secrets().items() if not k.startswith("DEMO_")},
        "IMAP_USER": "desk",
        "IMAP_PASSWORD": infra.IMAP_USERS["desk"],
        f"{service.env_prefix}_HTTP_PORT": str(service.port),
    }


def ready(service: Service) -> bool:
    try:
        with urllib.request.urlopen(f"{service.url}/readyz", timeout=3) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_service(service: Service, logs: Path) -> subprocess.Popen[bytes]:
    with open(logs / f"{service.name}.log", "ab") as log:
        return subprocess.Popen(
            [str(VENV_BIN / f"deskstream-{service.name}")],
            env=service_env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def start_services(logs: Path) -> dict[str, subprocess.Popen[bytes]]:
    logs.mkdir(parents=True, exist_ok=True)
    return {service.name: start_service(service, logs) for service in SERVICES}


def wait_ready(procs: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    waiting = {s.name: s for s in SERVICES}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for name, service in list(waiting.items()):
            if procs[name].poll() is not None:
                raise SystemExit(f"{name} exited; see {logs / (name + '.log')}")
            if ready(service):
                print(f"  {name:<14} healthy   {service.url}  (/readyz, /metrics)", flush=True)
                del waiting[name]
        time.sleep(0.5)
    if waiting:
        raise SystemExit(f"not ready within {READY_TIMEOUT_S}s: {', '.join(waiting)}")


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def print_api_help() -> None:
    api = SERVICES[0].url
    print(
        f"deskstream: ticket API {api}/v1 (OpenAPI: {api}/v1/openapi.json); the admin key is "
        f"{ADMIN_KEY_NAME} in {secrets_file()} (mode 600), e.g.\n"
        f"  curl -H \"Authorization: Bearer $(sed -n 's/^{ADMIN_KEY_NAME}=//p' "
        f'{secrets_file()})" {api}/v1/tickets',
        flush=True,
    )


def topics() -> Topics:
    return Topics(os.environ.get("DESKSTREAM_TOPIC_PREFIX", ""))


def new_live_view() -> live.LiveView:
    return live.LiveView(
        live.LiveConfig(
            kafka=infra.env_lines()["KAFKA_BOOTSTRAP_SERVERS"],
            topic=topics().name("tickets.events"),
            partitions=BY_NAME["tickets.events"].partitions,
            api_url=SERVICES[0].url,
            api_key=local_secrets()[ADMIN_KEY_NAME],
        )
    )


def start_live_view(view: live.LiveView) -> None:
    """Follow tickets.events from its end as it is now; returns once that end is fixed, so
    nothing the demo causes can be missed."""
    view.start()
    if view.wait_ready(LIVE_READY_TIMEOUT_S):
        live.say("deskstream: live view of tickets.events (created, assigned, queued) follows")
    else:
        live.say("deskstream: the live view is not following tickets.events yet; see notes above")


def play_demo() -> None:
    if os.environ.get("DESKSTREAM_DEMO", "1").lower() in {"0", "false", "no", "off"}:
        live.say("deskstream: DESKSTREAM_DEMO is off: no demo data")
        return
    env = infra.env_lines()
    config = demo.DemoConfig(
        api_url=SERVICES[0].url,
        admin_key=local_secrets()[ADMIN_KEY_NAME],
        secrets_file=secrets_file(),
        kafka=env["KAFKA_BOOTSTRAP_SERVERS"],
        topics=topics(),
        imap_host=env["IMAP_HOST"],
        imap_port=int(env["IMAP_PORT"]),
        imap_user="desk",
        imap_password=infra.IMAP_USERS["desk"],
    )
    demo.seed(config, live.say)


def main() -> int:
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    already_up = {name for name, c in infra.COMPONENTS.items() if infra._alive(c.dir) and c.ready()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    view: live.LiveView | None = None
    logs = infra.RUN_DIR / "logs"
    try:
        print("deskstream: starting the local infrastructure", flush=True)
        for component in infra.COMPONENTS.values():
            component.up()
        env = infra.env_lines()
        created = ensure_topics(
            env["KAFKA_BOOTSTRAP_SERVERS"], os.environ.get("DESKSTREAM_TOPIC_PREFIX", "")
        )
        print(f"topics: {len(created)} created, the rest already there", flush=True)
        print("deskstream: starting the services", flush=True)
        procs = start_services(logs)
        wait_ready(procs, logs)
        print(
            f"deskstream: all {len(SERVICES)} services healthy; logs in {logs}. "
            "Ctrl-C stops everything.",
            flush=True,
        )
        print_api_help()
        view = new_live_view()
        start_live_view(view)
        play_demo()
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited with {proc.returncode}; see its log")
            time.sleep(1)
    except Stop as stop:
        print(f"\ndeskstream: {stop}, stopping", flush=True)
        return 0
    finally:
        # Stopping must not be interrupted by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if view is not None:  # first: it reads from the services about to stop
            view.stop()
        stop_services(procs)
        for name in reversed(list(infra.COMPONENTS)):
            if name not in already_up:
                infra.COMPONENTS[name].down()
        print("deskstream: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
