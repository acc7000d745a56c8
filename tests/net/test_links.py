"""Sandbox links made with the real ``ip``: links asked for together come from one ``ip -batch``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from corral.errors import RuntimeFailure
from corral.net import links
from corral.net.links import Links, delete_link, host_iface, netns_name, network_for_slot, spare_id
from tests.hostcmds import Ran
from tests.serverproc import SUBNET_BASE, worker_index

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

SUBNET = f"10.{SUBNET_BASE + 16 + worker_index()}.0.0/24"


def addresses(*ip_args: str, dev: str) -> list[str]:
    out = subprocess.run(["ip", *ip_args, "-j", "addr", "show", "dev", dev], capture_output=True, check=True)
    info: list[dict[str, Any]] = json.loads(out.stdout)
    return [a["local"] for a in info[0]["addr_info"] if a["family"] == "inet"]


def test_a_bad_link_fails_only_its_own_create(ran: list[Ran]) -> None:
    pid = os.getpid()
    good = [(f"lt{pid}x{slot}", network_for_slot(SUBNET, slot)) for slot in range(6)]
    bad = (f"lt{pid}/bad", network_for_slot(SUBNET, 6))  # a '/' is no namespace name

    async def scenario() -> list[object]:
        maker = Links()
        return await asyncio.gather(*(maker.create(sid, spec) for sid, spec in [*good, bad]), return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes[:6] == [None] * 6, outcomes
        assert isinstance(outcomes[6], RuntimeFailure), outcomes[6]
        host_batches = [r.argv for r in ran if r.argv[:2] == ["ip", "-batch"]]
        # All seven in one batch, which the bad one failed; then each again alone.
        assert len(host_batches) == 8, host_batches
        for sid, spec in good:
            assert addresses(dev=host_iface(spec)) == [spec.host_address]
            assert addresses("-n", netns_name(sid), dev="eth0") == [spec.sandbox_address]
        assert not os.path.exists(links.netns_path(bad[0])), "a failed link leaves nothing behind"
    finally:
        for sid, spec in [*good, bad]:
            asyncio.run(delete_link(sid, spec))
    for sid, _spec in good:
        assert not os.path.exists(links.netns_path(sid))


def test_links_asked_for_together_are_made_by_one_ip_batch(ran: list[Ran]) -> None:
    pid = os.getpid()
    wanted = [(f"lt{pid}y{slot}", network_for_slot(SUBNET, 10 + slot)) for slot in range(5)]

    async def scenario() -> None:
        maker = Links()
        await asyncio.gather(*(maker.create(sid, spec) for sid, spec in wanted))

    try:
        asyncio.run(scenario())
        host_batches = [r.argv for r in ran if r.argv[:2] == ["ip", "-batch"]]
        assert len(host_batches) == 1, host_batches  # all five reached it in the same moment
        assert not any(r.argv[:3] == ["ip", "netns", "add"] for r in ran)
        for sid, spec in wanted:
            assert addresses("-n", netns_name(sid), dev="eth0") == [spec.sandbox_address]
    finally:
        for sid, spec in wanted:
            asyncio.run(delete_link(sid, spec))


def test_a_link_made_ahead_is_taken_without_a_command(ran: list[Ran]) -> None:
    pid = os.getpid()
    spec, other = network_for_slot(SUBNET, 20), network_for_slot(SUBNET, 21)
    sid, plain = f"lt{pid}z0", f"lt{pid}z1"
    outside = network_for_slot(f"10.{SUBNET_BASE + 17 + worker_index()}.9.0/24", 0)

    async def scenario() -> None:
        maker = Links()
        await maker.prepare(spec)
        await maker.prepare(other)
        ran.clear()
        await maker.create(sid, spec)

    try:
        asyncio.run(scenario())
        assert ran == [], [r.argv for r in ran]
        assert not os.path.exists(links.netns_path(spare_id(spec)))
        assert addresses("-n", netns_name(sid), dev="eth0") == [spec.sandbox_address]
        assert addresses(dev=host_iface(spec)) == [spec.host_address]
        # the link works: from inside its namespace, a connection reaches the host's end
        with socket.create_server((spec.host_address, 0)) as server:
            port = server.getsockname()[1]
            reach = f"import socket; socket.create_connection(({spec.host_address!r}, {port}), 2)"
            dial = ["ip", "netns", "exec", netns_name(sid), sys.executable, "-c", reach]
            subprocess.run(dial, check=True, timeout=10)
        # A spare whose veth pair is gone (a crash) is not taken: the create makes its own link.
        subprocess.run(["ip", "link", "del", host_iface(other)], check=True)
        asyncio.run(Links().create(plain, other))
        assert not os.path.exists(links.netns_path(spare_id(other)))
        assert addresses("-n", netns_name(plain), dev="eth0") == [other.sandbox_address]
        # What an earlier run made ahead is removed; other servers' subnets are left alone.
        asyncio.run(Links().prepare(other))
        asyncio.run(Links().prepare(outside))
        asyncio.run(Links.remove_spares(SUBNET))
        assert not os.path.exists(links.netns_path(spare_id(other)))
        assert os.path.exists(links.netns_path(spare_id(outside)))
    finally:
        for name, net in ((sid, spec), (plain, other)):
            asyncio.run(delete_link(name, net))
        for net in (spec, other, outside):
            asyncio.run(delete_link(spare_id(net), net))
