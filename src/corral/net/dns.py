"""The DNS forwarder every sandbox resolves names through (UDP and TCP).

The firewall redirects port 53 from any sandbox, to any address, here; so a
sandbox cannot pick another resolver to get round its policy. The forwarder
knows the sandbox by its source address and answers by its policy:

- ``none``: never gets here (dropped by the firewall), and would be refused;
- ``allowlist``: names outside ``allow_domains`` are refused (REFUSED);
- ``public_only``: every name is answered.

Answers for names in ``allow_domains`` have their addresses pinned in the
firewall *before* the answer goes back, so the connection that follows is
already allowed. Upstream resolvers are the host's (``/etc/resolv.conf``)
unless configured: the host resolves, so a resolver on the host's loopback
works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from corral.net.policy import EgressPolicy

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 3.0
MAX_TCP_MESSAGE = 65535


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks, as the forwarder needs to know it."""

    sandbox_id: str
    policy: EgressPolicy


Lookup = Callable[[str], Client | None]
"""Source address -> the sandbox it belongs to, if any."""
Pin = Callable[[str, list[str]], Awaitable[None]]
"""(sandbox id, addresses) -> made reachable for it."""


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's nameservers, in order."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [parts[1] for line in lines if len(parts := line.split()) >= 2 and parts[0] == "nameserver"]


def parse_upstream(value: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``[::1]:53`` or ``::1``."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


class Forwarder:
    """Listens on ``port`` (UDP and TCP, every address: the firewall admits only sandboxes)."""

    def __init__(self, *, upstreams: list[str], lookup: Lookup, pin: Pin, port: int = 0) -> None:
        self.upstreams = [parse_upstream(u) for u in upstreams]
        self.lookup = lookup
        self.pin = pin
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Bind both sockets on one port (a free one if ``port`` is 0); returns it."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=("0.0.0.0", self.port), family=socket.AF_INET
                )
                port = int(transport.get_extra_info("sockname")[1])
                try:
                    self._tcp = await asyncio.start_server(self._serve_tcp, "0.0.0.0", port, family=socket.AF_INET)
                except OSError:
                    transport.close()
                    if self.port:
                        raise
                    continue  # that UDP port's TCP twin is taken: try another
                self._udp, self.port = transport, port
                return port
            except OSError:
                if self.port:
                    raise
        raise OSError("no free port for the DNS forwarder")

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def answer(self, wire: bytes, source: str, *, tcp: bool) -> bytes | None:
        """The reply to one query from ``source`` (None: drop it, it is not DNS or not ours)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a question
        client = self.lookup(source)
        if client is None or not client.policy.dns or len(query.question) != 1:
            return _reply(query, dns.rcode.REFUSED)
        name = query.question[0].name.to_text(omit_final_dot=True)
        if not client.policy.allows_name(name):
            log.info("sandbox %s: refused DNS name %s (not in its allow_domains)", client.sandbox_id, name)
            return _reply(query, dns.rcode.REFUSED)
        response = await self._ask_upstream(query, tcp=tcp)
        if response is None:
            return _reply(query, dns.rcode.SERVFAIL)
        if client.policy.names_pinned(name):
            addresses = [item.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for item in rrset]
            if addresses:
                await self.pin(client.sandbox_id, addresses)
        return response.to_wire(max_size=MAX_TCP_MESSAGE if tcp else max(512, query.payload))

    async def resolve(self, name: str) -> list[str]:
        """IPv4 addresses of ``name`` through the upstreams (for pinning at policy time)."""
        query = dns.message.make_query(name, dns.rdatatype.A)
        response = await self._ask_upstream(query, tcp=False)
        if response is None:
            return []
        return [item.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for item in rrset]

    async def _ask_upstream(self, query: dns.message.Message, *, tcp: bool) -> dns.message.Message | None:
        for host, port in self.upstreams:
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, host, timeout=UPSTREAM_TIMEOUT, port=port)
                response, _ = await dns.asyncquery.udp_with_fallback(query, host, timeout=UPSTREAM_TIMEOUT, port=port)
                return response
            except (OSError, dns.exception.DNSException) as exc:
                log.debug("DNS upstream %s:%d failed: %s", host, port, exc)
        return None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 30))[0]
                wire = await asyncio.wait_for(reader.readexactly(size), 30)
                reply = await self.answer(wire, source, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        self.forwarder._spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | int, int]) -> None:
        reply = await self.forwarder.answer(data, str(addr[0]), tcp=False)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()
