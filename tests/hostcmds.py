"""For tests of host plumbing: every host command run, recorded as it runs for real; a command's nice value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from corral import hostcmd


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    input: str


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Ran]:
    """Every host command run through :mod:`corral.hostcmd` (for real), in order, with its stdin."""
    commands: list[Ran] = []
    real_run = hostcmd.run

    async def spy(argv: list[str], **kwargs: Any) -> hostcmd.Completed:
        stdin = kwargs.get("input")
        commands.append(Ran(list(argv), stdin.decode() if stdin else ""))
        return await real_run(argv, **kwargs)

    monkeypatch.setattr(hostcmd, "run", spy)
    return commands


# The shell waits a moment before it reads: a background command is niced right after its spawn.
READ_NICE = "sleep 0.2; cut -d' ' -f19 /proc/$$/stat"


async def nice_of_a_command() -> int:
    """The nice value a host command run from here gets (see :func:`corral.hostcmd.in_the_background`)."""
    done = await hostcmd.run(["sh", "-c", READ_NICE])
    return int(done.stdout)
