"""Byte-level proxying: a TCP listener whose connections are spliced to a sandbox's port.

Both the preview proxy (HTTP, routed by host name) and published ports (plain
TCP) end in :func:`splice`: bytes copied both ways until both sides are done,
half-closes kept, so HTTP streaming, WebSocket upgrades and large bodies pass
untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0

Target = Callable[[], Awaitable[tuple[str, int]]]
"""Where a new connection goes: (address, port), found when it arrives (may wake the sandbox)."""
Activity = Callable[[], None]
"""Told (at most once a second) that bytes are flowing, so an idle timer does not fire mid-connection."""
ACTIVITY_EVERY = 1.0


async def connect(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port, limit=CHUNK), CONNECT_TIMEOUT)
    _no_delay(writer)
    return reader, writer


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    activity: Activity | None = None,
) -> None:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` until both directions end; then close both."""
    seen = _Throttle(activity)
    try:
        await asyncio.gather(_copy(a[0], b[1], seen), _copy(b[0], a[1], seen))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


class _Throttle:
    def __init__(self, activity: Activity | None) -> None:
        self.activity, self.last = activity, 0.0

    def __call__(self) -> None:
        if self.activity is not None:
            now = time.monotonic()
            if now - self.last >= ACTIVITY_EVERY:
                self.last = now
                self.activity()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: _Throttle) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            seen()
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpForwarder:
    """Listens on ``host:port``; every connection is spliced to what ``target`` names."""

    def __init__(self, host: str, port: int, target: Target, *, activity: Activity | None = None) -> None:
        self.host, self.port, self.target, self.activity = host, port, target, activity
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=CHUNK, reuse_address=True)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            _no_delay(writer)
            address, port = await self.target()
            upstream = await connect(address, port)
        except Exception as exc:
            log.info("published port %d: cannot reach the sandbox (%s)", self.port, exc)
            writer.transport.abort()
            self._conns.discard(task)
            return
        try:
            await splice((reader, writer), upstream, activity=self.activity)
        finally:
            self._conns.discard(task)
