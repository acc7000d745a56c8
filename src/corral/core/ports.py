"""Published ports: a host port on the server's address forwarded to a port in a sandbox.

Asked for at create (``publish``), added and removed later, or mirrored from
the sandbox (``auto_publish``: every port something in the sandbox listens
on, on the same host port, while it listens). They are in the store with the
sandbox and opened again when the server starts. A connection to a paused or
hibernated sandbox's port wakes it, like any other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from typing import TYPE_CHECKING

from corral.errors import Conflict, CorralError, PortInUse
from corral.net.policy import Published
from corral.net.proxy import TcpForwarder
from corral.runtimes.base import AGENT_PORT
from corral.store.models import SandboxRow

if TYPE_CHECKING:
    from corral.core.sandboxes import SandboxManager

log = logging.getLogger(__name__)

AUTO_INTERVAL = 1.0
"""Seconds between looks at what auto-publishing sandboxes listen on."""
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


class PublishedPorts:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._open: dict[str, dict[int, tuple[Published, TcpForwarder]]] = {}
        self._auto: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        return self.manager.settings.host

    async def start(self) -> None:
        """Open every port the store lists for sandboxes that exist (after a restart)."""
        for row in self.manager.store.list_sandboxes(states={"running", "paused", "hibernated"}):
            for entry in row.ports or []:
                with contextlib.suppress(CorralError):
                    await self._listen(row.id, Published(**entry))
        self._auto = asyncio.create_task(self._auto_forever(), name="corral-auto-publish")

    async def aclose(self) -> None:
        if self._auto is not None:
            self._auto.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auto
        for sandbox_id in list(self._open):
            await self.close(sandbox_id)

    async def open(self, row: SandboxRow) -> None:
        """A new sandbox's ports, as its create asked; a taken host port fails the create."""
        for entry in row.ports or []:
            await self._listen(row.id, Published(**entry))

    async def close(self, sandbox_id: str) -> None:
        for _, forwarder in self._open.pop(sandbox_id, {}).values():
            await forwarder.aclose()

    def listed(self, sandbox_id: str) -> list[Published]:
        return [p for p, _ in self._open.get(sandbox_id, {}).values()]

    async def publish(self, sandbox_id: str, wanted: Published) -> Published:
        row = self.manager.get(sandbox_id)
        if wanted.host_port in self._open.get(sandbox_id, {}):
            raise PortInUse(
                f"host port {wanted.host_port} is already published for sandbox '{sandbox_id}'",
                details={"host_port": wanted.host_port},
            )
        await self._listen(sandbox_id, wanted)
        self._save(row.id)
        return wanted

    async def unpublish(self, sandbox_id: str, host_port: int) -> None:
        self.manager.get(sandbox_id)
        entry = self._open.get(sandbox_id, {}).pop(host_port, None)
        if entry is None:
            raise Conflict(
                f"host port {host_port} is not published for sandbox '{sandbox_id}'", details={"host_port": host_port}
            )
        await entry[1].aclose()
        self._save(sandbox_id)

    # -- internals -----------------------------------------------------------

    async def _listen(self, sandbox_id: str, wanted: Published) -> None:
        async def target() -> tuple[str, int]:
            await self.manager.lifecycle.ensure_awake(sandbox_id)
            return self.manager.get(sandbox_id).address, wanted.port

        forwarder = TcpForwarder(
            self.host, wanted.host_port, target, activity=lambda: self.manager.lifecycle.touch(sandbox_id)
        )
        try:
            await forwarder.start()
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(
                    f"host port {wanted.host_port} on {self.host} is taken by another program",
                    details={"host_port": wanted.host_port},
                ) from None
            raise
        self._open.setdefault(sandbox_id, {})[wanted.host_port] = (wanted, forwarder)
        log.info("sandbox %s: port %d published on %s:%d", sandbox_id, wanted.port, self.host, wanted.host_port)

    def _save(self, sandbox_id: str) -> None:
        self.manager.store.update_sandbox(sandbox_id, ports=[p.to_json() for p in self.listed(sandbox_id)])

    async def _auto_forever(self) -> None:
        while True:
            await asyncio.sleep(AUTO_INTERVAL)
            for row in self.manager.store.list_sandboxes(states={"running"}):
                if row.auto_publish:
                    with contextlib.suppress(CorralError, OSError, ValueError):
                        await self._mirror(row)

    async def _mirror(self, row: SandboxRow) -> None:
        """Publish what the sandbox listens on now, and drop auto ports it stopped listening on."""
        listening = await self._listeners(row.id)
        current = self._open.get(row.id, {})
        for host_port, (entry, forwarder) in list(current.items()):
            if entry.auto and entry.port not in listening:
                del current[host_port]
                await forwarder.aclose()
                self._save(row.id)
        taken = {entry.port for entry, _ in current.values()}
        for port in sorted(listening - taken):
            try:
                await self._listen(row.id, Published(host_port=port, port=port, auto=True))
            except PortInUse:
                continue  # the same number is taken on the host: not mirrored
            self._save(row.id)

    async def _listeners(self, sandbox_id: str) -> set[int]:
        """TCP ports something in the sandbox listens on, reachable from outside (not loopback-only)."""
        agent = self.manager.agent(sandbox_id)
        ports: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                resp = await agent.read_file(table, user="root")
            except CorralError:
                continue
            try:
                text = (await resp.aread()).decode(errors="replace")
            finally:
                await resp.aclose()
            for line in text.splitlines()[1:]:
                fields = line.split()
                if len(fields) < 4 or fields[3] != LISTEN:
                    continue
                address, _, port_hex = fields[1].partition(":")
                if address.startswith("0100007F") or address == "00000000000000000000000001000000":
                    continue  # 127.0.0.1 or ::1 only
                ports.add(int(port_hex, 16))
        ports.discard(AGENT_PORT)
        return ports
