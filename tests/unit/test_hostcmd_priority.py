"""Host commands: those run in the background (work done ahead of need) are niced; whether a process lives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

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


def test_a_process_that_exited_is_not_alive_while_its_parent_has_not_reaped_it() -> None:
    assert hostcmd.alive(os.getpid())
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _state(child.pid) != "Z":  # exited, not yet waited for
        time.sleep(0.01)
    assert _state(child.pid) == "Z"
    assert not hostcmd.alive(child.pid)
    child.wait()
    assert not hostcmd.alive(child.pid)  # gone altogether


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
