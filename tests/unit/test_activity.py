"""Work done ahead waits until no sandbox has been in the making for a moment."""

from __future__ import annotations

import asyncio
import os

from corral import hostcmd
from corral.activity import Activity, WorkAhead
from tests.hostcmds import nice_of_a_command


def test_until_quiet_waits_for_every_making_and_the_settle_after_it() -> None:
    async def scenario() -> list[str]:
        activity = Activity()
        seen: list[str] = []

        async def make(name: str, seconds: float) -> None:
            async with activity.making():
                await asyncio.sleep(seconds)
            seen.append(f"{name} made")

        async def spare() -> None:
            await activity.until_quiet(0.05)
            seen.append("spare")

        await activity.until_quiet()  # nothing in the making: at once
        first = asyncio.create_task(make("first", 0.05))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(spare())
        await asyncio.sleep(0.07)  # first is made; within the settle a second begins
        second = asyncio.create_task(make("second", 0.05))
        await asyncio.gather(first, second, waiting)
        return seen

    assert asyncio.run(scenario()) == ["first made", "second made", "spare"]


def test_work_ahead_runs_one_fill_at_a_time_at_low_priority_and_stops() -> None:
    async def scenario() -> tuple[list[float], int, list[str]]:
        delays: list[float] = []
        nice: list[int] = []
        ended: list[str] = []
        ran = asyncio.Event()

        async def fill(delay: float) -> None:
            delays.append(delay)
            nice.append(await nice_of_a_command())
            ran.set()
            try:
                await asyncio.Event().wait()  # never set: only stop ends it
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        ahead = WorkAhead(fill, name="test-work-ahead")
        ahead.start(delay=0.5)
        ahead.start()  # running already: no second fill
        await ran.wait()
        await ahead.stop()
        return delays, nice[0], ended

    delays, nice, ended = asyncio.run(scenario())
    assert delays == [0.5]
    assert nice == max(os.getpriority(os.PRIO_PROCESS, 0), hostcmd.LOW_PRIORITY)
    assert ended == ["cancelled"]  # stop cancelled the fill where it waited
