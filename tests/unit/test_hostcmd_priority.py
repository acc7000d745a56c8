"""Host commands run in the background (work done ahead of need) yield the CPU: they are niced."""

from __future__ import annotations

import asyncio
import os

from corral import hostcmd
from tests.hostcmds import nice_of_a_command


def test_commands_in_the_background_are_niced_and_others_are_not() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)

    async def scenario() -> tuple[int, int, int, int]:
        plain = await nice_of_a_command()
        with hostcmd.in_the_background():
            niced = await nice_of_a_command()
            # A task started inside keeps the setting after the block is left.
            task = asyncio.create_task(nice_of_a_command())
        after = await nice_of_a_command()
        return plain, niced, await task, after

    plain, niced, in_task, after = asyncio.run(scenario())
    assert plain == own
    assert niced == in_task == max(own, hostcmd.LOW_PRIORITY)
    assert after == own
