"""`make run` brings up everything, reports five healthy services, and Ctrl-C leaves nothing."""

from __future__ import annotations

import re
import time

from tests.make_run import listening, processes_in_group, start_make_run


def test_make_run_starts_everything_and_sigint_stops_it() -> None:
    run = start_make_run("makerun", 18180)
    output: list[str] = []
    try:
        assert run.proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in run.proc.stdout:
            output.append(line)
            if "services healthy" in line or time.monotonic() > deadline:
                break
        healthy = [line for line in output if re.search(r"^\s+\S+\s+healthy\s+http://", line)]
        assert len(healthy) == 5, "".join(output)
        assert "all 5 services healthy" in output[-1]
        assert all(listening(run.base + i) for i in range(5))

        run.interrupt()
        rest, _ = run.proc.communicate(timeout=90)
        output.append(rest)
        # Checked before the clean-up below, which would hide a leak.
        assert processes_in_group(run.proc.pid) == []
        still = [p for p in run.ports() if listening(p)]
        assert still == [], f"still listening: {still}"
    finally:
        run.stop()
    assert "deskstream: stopped" in "".join(output)
