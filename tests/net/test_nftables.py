"""Transactions through libnftables, against the host's real nftables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from corral.errors import RuntimeFailure
from corral.net import nftables
from tests.serverproc import worker_index

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs root")

TABLE = f"corral_test_nftables_{worker_index()}"


def listed() -> str:
    return subprocess.run(["nft", "list", "table", "inet", TABLE], capture_output=True, text=True).stdout


def test_a_script_applies_whole_or_not_at_all() -> None:
    async def scenario() -> None:
        await nftables.apply(f"table inet {TABLE} {{\n set kept {{ type ipv4_addr; }}\n}}\n")
        assert "set kept" in listed()
        # The second line names a set that does not exist: the first must not stay either.
        with pytest.raises(RuntimeFailure, match="nft refused a change") as refused:
            await nftables.apply(
                f"add set inet {TABLE} dropped {{ type ipv4_addr; }}\nadd element inet {TABLE} nosuch {{ 192.0.2.1 }}\n"
            )
        assert "No such file or directory" in refused.value.details["error"]
        assert "dropped" not in listed()
        outcome = await nftables.apply(f"delete set inet {TABLE} nosuch\n", check=False)
        assert not outcome.ok and "No such file or directory" in outcome.error

    try:
        asyncio.run(scenario())
    finally:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, check=False)


def test_a_cancelled_caller_resumes_only_after_its_transaction_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    real_apply = nftables._Library.apply

    def slow_apply(library: nftables._Library, script: str) -> nftables.Outcome:
        time.sleep(0.3)  # a transaction on a busy host
        return real_apply(library, script)

    async def scenario() -> None:
        await nftables.apply(f"table inet {TABLE} {{\n set s {{ type ipv4_addr; }}\n}}\n")
        monkeypatch.setattr(nftables._Library, "apply", slow_apply)
        task = asyncio.create_task(nftables.apply(f"add element inet {TABLE} s {{ 198.51.100.7 }}\n"))
        await asyncio.sleep(0.05)  # under way in its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # What the caller would do next (undo it) comes after the change, never before.
        assert "198.51.100.7" in listed()

    try:
        asyncio.run(scenario())
    finally:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, check=False)
