"""The watchdog reports a step that hangs, with where it waits, and only such a step."""

from __future__ import annotations

import asyncio
import logging

import pytest
from deskstream.watchdog import Watchdog, await_chain


async def test_a_hung_step_is_reported_once_with_its_await_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = Watchdog(stuck_after_s=0.05)
    release = asyncio.Event()

    async def wait_for_reply() -> None:
        await release.wait()

    async def work() -> None:
        with watchdog.step("commit"), watchdog.step("quick"):
            pass
        with watchdog.step("commit"):
            await wait_for_reply()

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    assert watchdog.stuck() == {}  # under way, not yet too long
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="deskstream.watchdog"):
        first = watchdog.stuck()
        again = watchdog.stuck()
        assert list(first) == ["commit"]
        assert first["commit"] >= 0.05
        assert list(again) == ["commit"]
        stuck_lines = [r for r in caplog.records if r.getMessage() == "step stuck"]
        assert len(stuck_lines) == 1  # logged once, however often it is asked
        chain = stuck_lines[0].waiting_in  # type: ignore[attr-defined]
        assert [c.rsplit(" in ", 1)[1] for c in chain[:2]] == ["work", "wait_for_reply"]
        assert "test_watchdog.py" in chain[0]
        release.set()
        await task
    assert watchdog.stuck() == {}
    assert any(r.getMessage() == "stuck step finished after all" for r in caplog.records)


async def test_the_chain_ends_at_the_future_awaited() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def inner() -> None:
        await future

    task = asyncio.create_task(inner())
    await asyncio.sleep(0)
    chain = await_chain(task)
    assert chain[0].endswith(" in inner")
    assert chain[-1].startswith("waiting for <Future pending")
    future.set_result(None)
    await task
