"""Work done ahead waits until no sandbox has been in the making for a moment."""

from __future__ import annotations

import asyncio

from corral.activity import Activity


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
