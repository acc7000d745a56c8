"""Firewall attachments with the real nftables: asked for (or removed) together, in one transaction."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import pytest

from corral.errors import RuntimeFailure
from corral.net import nftables
from corral.net.firewall import Attachment, Firewall
from corral.net.policy import EgressPolicy
from tests.serverproc import SUBNET_BASE, worker_index

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs root")

SUBNET = f"10.{SUBNET_BASE + 16 + worker_index()}.1.0/24"


def listed(fw: Firewall) -> str:
    return subprocess.run(["nft", "list", "table", "inet", fw.table], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every nftables transaction's script, in order, as it is applied for real."""
    scripts: list[str] = []
    real_apply = nftables.apply

    async def spy(script: str, **kwargs: Any) -> nftables.Outcome:
        scripts.append(script)
        return await real_apply(script, **kwargs)

    monkeypatch.setattr(nftables, "apply", spy)
    return scripts


def test_attachments_asked_for_together_load_in_one_transaction(applied: list[str]) -> None:
    def transactions() -> list[str]:
        return applied

    fw = Firewall(SUBNET, dns_port=5353)
    prefix = SUBNET.rsplit(".", 1)[0]
    good = [Attachment(f"fb{i}", f"{prefix}.{4 * i + 2}", f"{prefix}.{4 * i + 1}", EgressPolicy()) for i in range(5)]
    # A CIDR nft refuses (EgressPolicy's own checks never let one through): that one fails alone.
    bad = Attachment("fbbad", f"{prefix}.30", f"{prefix}.29", EgressPolicy(allow_cidrs=("10.0.0.0/33",)))

    async def scenario() -> list[object]:
        await fw.install([])
        applied.clear()
        first = await asyncio.gather(*(fw.attach(a) for a in good), return_exceptions=True)
        second = await asyncio.gather(*(fw.attach(a) for a in (*good[:2], bad)), return_exceptions=True)
        return [*first, *second]

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes[:7] == [None] * 7, outcomes
        assert isinstance(outcomes[7], RuntimeFailure), outcomes[7]
        # five in one; then three in one, which failed, and each of those alone
        assert len(transactions()) == 1 + 1 + 3, [t[:80] for t in transactions()]
        assert all(f"out_{a.sandbox_id}" in transactions()[0] for a in good)
        table = listed(fw)
        for a in good:
            assert f"chain out_{a.sandbox_id}" in table and f"{a.address} : jump out_{a.sandbox_id}" in table
        assert "fbbad" not in table

        applied.clear()

        async def detach_all() -> None:
            await asyncio.gather(*(fw.detach(a.sandbox_id, a.address) for a in (*good, bad)))

        asyncio.run(detach_all())  # the bad one was never attached: its removal fails the batch, then passes alone
        assert len(transactions()[0].splitlines()) == 6 * 5, transactions()[0]
        table = listed(fw)
        assert "out_fb" not in table and "in_fb" not in table and "pin_fb" not in table, table
    finally:
        asyncio.run(fw.remove_table())
