"""Boots take turns: past CORRAL_MAX_CONCURRENT_STARTS, creates wait, and their start_timeout begins with their boot."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral import Sandbox
from corral.runtimes.consoles import console_path
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.runsc]

CREATES = 3


def boot_span(sandbox_dir: Path) -> tuple[datetime, datetime]:
    """When its boot began (its bundle was written, just before the runtime's start) and its agent listened."""
    began = datetime.fromtimestamp((sandbox_dir / "bundle" / "config.json").stat().st_mtime, UTC)
    console = console_path(sandbox_dir).read_text()
    line = next(line for line in console.splitlines() if " corral-agent: listening" in line)
    return began, datetime.fromisoformat(line.split(" ", 1)[0])  # the agent's clock is the host's


def test_boots_beyond_the_limit_wait_their_turn(tmp_path: Path) -> None:
    # A start_timeout that one boot meets but three at once on a loaded host might not: the wait is not counted.
    # No boot snapshots: every create boots.
    env = {"CORRAL_MAX_CONCURRENT_STARTS": "1", "CORRAL_START_TIMEOUT": "15", "CORRAL_BOOT_SNAPSHOTS": "0"}
    with ServerProcess(tmp_path / "data", subnet_index=54 + worker_index(), env=env).running() as proc:
        with ThreadPoolExecutor(CREATES) as pool:
            made = list(pool.map(lambda _: Sandbox.create(url=proc.url, timeout=120), range(CREATES)))
        try:
            spans = sorted(boot_span(proc.data_dir / "sandboxes" / sbx.id) for sbx in made)
            for (_, ready), (began, _) in itertools.pairwise(spans):
                assert began >= ready, f"a boot began before the one before it had answered: {spans}"
            assert "waits for one of 1 boots under way" in proc.log()
            assert [sbx.commands.run("echo up").stdout for sbx in made] == ["up\n"] * CREATES
        finally:
            for sbx in made:
                sbx.kill()
