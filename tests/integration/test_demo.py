"""`make run` plays its demo: mail and portal requests become tickets, live, assigned with a why.

Runs `make run` as `test_make_run` does (own ports, own run dir under `.run/test/`), reads
its terminal until the live view has shown every demo ticket created and assigned, checks
the out-of-office mail made no ticket, then stops it with SIGINT and checks nothing is left.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from deskstream.metrics import FAMILIES

from tests import prom
from tests.make_run import listening, processes_in_group, start_make_run
from tests.services import ALL

DEADLINE_S = 180  # start-up (about 30 s here) plus the demo; only a guard
GRACE_S = 8  # after the last expected line: time enough for a wrong ticket to show up
LIVE_LINE = re.compile(
    r"^\d\d:\d\d:\d\d  (?P<ticket>DS-[A-Z2-7]{8})  (?P<channel>\S+)\s+(?P<service>\S+)\s+"
    r"(?P<what>new: .*|-> \S+ \(.*\)|queued .*)$"
)
PORTAL_LINE = re.compile(r"^demo: portal .* -> (?P<ticket>DS-[A-Z2-7]{8}) \((?P<service>\S+)\)$")
EMAIL_SERVICES = {"vpn", "password-reset", "printing", "hardware-request"}


@dataclass
class Seen:
    """What the terminal has shown so far."""

    created: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id -> ch, svc, text
    assigned: dict[str, str] = field(default_factory=dict)  # ticket -> the whole line
    portal: dict[str, str] = field(default_factory=dict)  # ticket -> service
    mails_delivered: bool = False

    def take(self, line: str) -> None:
        line = line.rstrip("\n")
        if line.startswith("demo: ") and "mails delivered" in line:
            self.mails_delivered = True
        if m := PORTAL_LINE.match(line):
            self.portal[m["ticket"]] = m["service"]
        if m := LIVE_LINE.match(line):
            if m["what"].startswith("new: "):
                self.created[m["ticket"]] = (m["channel"], m["service"], m["what"])
            elif m["what"].startswith("-> "):
                self.assigned[m["ticket"]] = line

    def email_tickets(self) -> set[str]:
        return {t for t, (channel, _, _) in self.created.items() if channel == "email"}

    def complete(self) -> bool:
        expected = self.email_tickets() | set(self.portal)
        return (
            self.mails_delivered
            and len(self.portal) == 3
            and len(self.email_tickets()) >= 4
            and expected <= set(self.created)
            and expected <= set(self.assigned)
        )


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    # A thread, so the test's deadline holds even when `make run` prints nothing.
    for line in stream:
        lines.put(line)
    lines.put(None)


def _read_until(
    lines: queue.Queue[str | None],
    output: list[str],
    seen: Seen,
    until: float,
    stop_when_done: bool,
) -> None:
    while time.monotonic() < until:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            return
        output.append(line)
        seen.take(line)
        if stop_when_done and seen.complete():
            return


SERVICES = ALL  # in port order, as deploy/local/run.py starts them


def _metrics_after_the_demo(base: int) -> None:
    """`curl localhost:<port>/metrics` on each service shows the shared families, with values."""
    found = {}
    for offset, service in enumerate(SERVICES):
        text = prom.scrape(f"http://127.0.0.1:{base + offset}")
        missing = {f._name for f in FAMILIES} - prom.families(text)
        assert not missing, (service, missing)
        found[service] = prom.samples(text)
        up = prom.value(found[service], "deskstream_connection_up", kind="kafka")
        assert up == 1, (service, "kafka connection")
    consumed, produced = "deskstream_events_consumed_total", "deskstream_events_produced_total"
    assert prom.value(found["ingest-email"], produced, topic="inbound.email") >= 4
    assert prom.value(found["ingest-email"], "deskstream_inputs_ignored_total") >= 1  # OOO
    assert prom.value(found["router"], consumed, topic="inbound.email", channel="email") >= 4
    assert prom.value(found["router"], consumed, topic="inbound.portal", channel="portal") >= 3
    assert prom.value(found["ticket-api"], consumed, topic="tickets.commands") >= 14
    decisions = "deskstream_routing_decisions_total"
    assert prom.value(found["ticket-api"], decisions, outcome="assigned") >= 7
    assert prom.value(found["ticket-api"], "deskstream_connection_up", kind="mongodb") == 1


def test_make_run_shows_demo_tickets_created_and_assigned_live() -> None:
    # DESKSTREAM_DEMO="" drops a DESKSTREAM_DEMO=0 from the environment: the demo runs.
    run = start_make_run("demo", 18680, DESKSTREAM_DEMO="")
    proc = run.proc
    output: list[str] = []
    seen = Seen()
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        _read_until(lines, output, seen, time.monotonic() + DEADLINE_S, stop_when_done=True)
        assert seen.complete(), "".join(output)
        # The out-of-office mail was delivered before the last two: give it time to show up.
        _read_until(lines, output, seen, time.monotonic() + GRACE_S, stop_when_done=False)
        _metrics_after_the_demo(run.base)

        run.interrupt()
        proc.wait(timeout=90)
        _read_until(lines, output, seen, time.monotonic() + 5, stop_when_done=False)
        # Checked before the clean-up below, which would hide a leak.
        assert processes_in_group(proc.pid) == []
        still = [p for p in run.ports() if listening(p)]
        assert still == [], f"still listening: {still}"
    finally:
        run.stop()
    text = "".join(output)
    assert "deskstream: stopped" in text, text
    assert "FAILED" not in text, text

    emails = seen.email_tickets()
    assert {seen.created[t][1] for t in emails} == EMAIL_SERVICES, text
    assert len(emails) == 4, f"the out-of-office mail made a ticket?\n{text}"
    assert not any("Automatic reply" in seen.created[t][2] for t in emails), text
    for ticket, service in seen.portal.items():
        assert seen.created[ticket][:2] == ("portal", service), text
    for ticket in emails | set(seen.portal):
        assert "rule " in seen.assigned[ticket], text  # the router's why is shown
