"""Firewall attachments with the real ``nft``: asked for (or removed) together, in one transaction."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from corral.errors import RuntimeFailure
from corral.net.firewall import Attachment, Firewall
from corral.net.policy import EgressPolicy
from tests.net.conftest import Ran
from tests.serverproc import SUBNET_BASE, worker_index

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs root")

SUBNET = f"10.{SUBNET_BASE + 16 + worker_index()}.1.0/24"


def listed(fw: Firewall) -> str:
    return subprocess.run(["nft", "list", "table", "inet", fw.table], capture_output=True, text=True, check=True).stdout


def test_attachments_asked_for_together_load_in_one_transaction(ran: list[Ran]) -> None:
    def transactions() -> list[str]:
        return [r.input for r in ran if r.argv[:2] == ["nft", "-f"]]

    fw = Firewall(SUBNET, dns_port=5353)
    prefix = SUBNET.rsplit(".", 1)[0]
    good = [Attachment(f"fb{i}", f"{prefix}.{4 * i + 2}", f"{prefix}.{4 * i + 1}", EgressPolicy()) for i in range(5)]
    # A CIDR nft refuses (EgressPolicy's own checks never let one through): that one fails alone.
    bad = Attachment("fbbad", f"{prefix}.30", f"{prefix}.29", EgressPolicy(allow_cidrs=("10.0.0.0/33",)))

    async def scenario() -> list[object]:
        await fw.install([])
        ran.clear()
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

        ran.clear()

        async def detach_all() -> None:
            await asyncio.gather(*(fw.detach(a.sandbox_id, a.address) for a in (*good, bad)))

        asyncio.run(detach_all())  # the bad one was never attached: its removal fails the batch, then passes alone
        assert len(transactions()[0].splitlines()) == 6 * 5, transactions()[0]
        table = listed(fw)
        assert "out_fb" not in table and "in_fb" not in table and "pin_fb" not in table, table
    finally:
        asyncio.run(fw.remove_table())
