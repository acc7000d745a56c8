"""Sandboxes' networks as the orchestrator sees them: egress policy and DNS.

Glue between the store (each sandbox's policy is in its row), the firewall
(rules on the host side of each link) and the DNS forwarder. A sandbox is
attached before its runtime starts it, so no packet of it ever leaves
unfiltered, and detached when it is gone. At server start the whole table is
loaded again from the store in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from corral.config import Settings
from corral.net import dns
from corral.net.firewall import Attachment, Firewall
from corral.net.policy import EgressPolicy
from corral.store.models import SandboxRow

log = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def policy_of(row: SandboxRow) -> EgressPolicy:
    return EgressPolicy.from_json(row.network) if row.network is not None else EgressPolicy(mode="none")


def attachment(row: SandboxRow) -> Attachment:
    info = row.runtime_info or {}
    return Attachment(
        sandbox_id=row.id,
        address=row.address,
        gateway=str(info.get("host_address") or ipaddress.ip_address(row.address) - 1),
        policy=policy_of(row),
    )


class Network:
    """Egress for every sandbox of this server. ``start`` before use, ``aclose`` at the end."""

    def __init__(self, settings: Settings, *, enabled: bool = True) -> None:
        self.settings = settings
        self.enabled = enabled
        """False for runtimes that have no host links (tests' fake runtime): then every call is a no-op."""
        self.default_policy = EgressPolicy.from_json(settings.default_network)
        self._clients: dict[str, dns.Client] = {}
        self._pinned: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarder = dns.Forwarder(
            upstreams=settings.dns_servers or dns.host_resolvers(),
            lookup=self._clients.get,
            pin=self.pin,
            port=settings.dns_port,
        )
        self.firewall: Firewall | None = None

    async def start(self, rows: Iterable[SandboxRow]) -> None:
        if not self.enabled:
            return
        port = await self.forwarder.start()
        self.firewall = Firewall(self.settings.sandbox_subnet, dns_port=port)
        attached = [attachment(row) for row in rows]
        await self.firewall.install(attached)
        for a in attached:
            self._remember(a)
        _enable_forwarding()
        log.info("network: DNS forwarder on port %d, upstreams %s", port, self.forwarder.upstreams)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.enabled:
            await self.forwarder.aclose()

    def resolve_policy(self, requested: dict[str, object] | None) -> EgressPolicy:
        """The policy a new sandbox gets: what the request says, else the server's default."""
        return self.default_policy if requested is None else EgressPolicy.from_json(dict(requested))

    async def attach(self, row: SandboxRow) -> None:
        """Apply the row's policy to its address (also to change it on a running sandbox)."""
        if not self.enabled:
            return
        a = attachment(row)
        await self._fw.attach(a)
        self._remember(a)

    async def detach(self, row: SandboxRow) -> None:
        self._clients.pop(row.address, None)
        self._pinned.pop(row.id, None)
        if self.enabled:
            await self._fw.detach(row.id, row.address)

    async def pin(self, sandbox_id: str, addresses: list[str]) -> None:
        pinned = self._pinned.setdefault(sandbox_id, set())
        new = [a for a in addresses if a not in pinned]
        if new:
            await self._fw.pin(sandbox_id, new)
            pinned.update(new)

    # -- internals -----------------------------------------------------------

    @property
    def _fw(self) -> Firewall:
        if self.firewall is None:
            raise RuntimeError("Network.start() was not called")
        return self.firewall

    def _remember(self, a: Attachment) -> None:
        self._clients[a.address] = dns.Client(sandbox_id=a.sandbox_id, policy=a.policy)
        self._pinned[a.sandbox_id] = set()
        exact = [d for d in a.policy.allow_domains if not d.startswith("*.")]
        if exact:  # resolved now too, so a connection by a cached address works at once
            task = asyncio.create_task(self._pin_names(a.sandbox_id, exact))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pin_names(self, sandbox_id: str, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                addresses = await self.forwarder.resolve(name)
                if addresses and sandbox_id in self._pinned:
                    await self.pin(sandbox_id, addresses)


def _enable_forwarding() -> None:
    """Sandboxes' packets to the world are routed by the host: IPv4 forwarding must be on."""
    try:
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1\n")
            log.info("network: turned on IPv4 forwarding (net.ipv4.ip_forward=1)")
    except OSError as exc:
        log.warning("network: cannot turn on IPv4 forwarding (%s): sandboxes will not reach the world", exc)
