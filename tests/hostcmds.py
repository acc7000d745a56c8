"""A fixture for tests of host plumbing: every host command run, recorded as it runs for real."""

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
