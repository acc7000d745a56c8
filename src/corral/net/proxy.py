"""Byte-level proxying: connections relayed to a port in a sandbox.

Both the preview proxy (HTTP, routed by host name) and published ports (plain
TCP) end in a *relay*: two transports wired to each other, each one's bytes
written straight to the other from the event loop's callbacks (no task, no
copy through a stream buffer), with flow control (a full side stops reading
the other) and half-closes kept. So HTTP streaming, WebSocket upgrades and
large bodies pass untouched, at close to the speed of the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
ACTIVITY_EVERY = 1.0

Target = Callable[[], Awaitable[tuple[str, int]]]
"""Where a new connection goes: (address, port), found when it arrives (may wake the sandbox)."""
Activity = Callable[[], None]
"""Told (at most once a second) that bytes are flowing, so an idle timer does not fire mid-connection."""


class _Throttle:
    def __init__(self, activity: Activity | None) -> None:
        self.activity, self.last = activity, 0.0

    def __call__(self) -> None:
        if self.activity is not None:
            now = time.monotonic()
            if now - self.last >= ACTIVITY_EVERY:
                self.last = now
                self.activity()


class Pipe(asyncio.Protocol):
    """One side of a relay: what its transport receives is written to the peer's."""

    def __init__(self, seen: _Throttle) -> None:
        self.seen = seen
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.eof = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        _no_delay(transport)

    def data_received(self, data: bytes) -> None:
        self.seen()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        if peer is None or peer.eof:
            self._close_both()
        return True  # keep our sending half open: the other direction may still flow

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()


async def relay(
    client: Waiting,
    address: str,
    port: int,
    *,
    first: Callable[[bytes], bytes] = bytes,
    activity: Activity | None = None,
) -> None:
    """Connect to ``address:port``, then relay ``client``'s connection and it both ways until both close.

    What ``client`` received so far goes first, through ``first`` (which may rewrite
    it: the preview proxy drops its token from the head). Raises OSError or
    TimeoutError if the connection cannot be made (``client`` is left as it is).
    """
    loop = asyncio.get_running_loop()
    seen = _Throttle(activity)
    ours = Pipe(seen)
    _, theirs = await asyncio.wait_for(loop.create_connection(lambda: Pipe(seen), address, port), CONNECT_TIMEOUT)
    transport = client.transport
    if transport is None or transport.is_closing():
        theirs._close_both()
        return
    # No await from here on: every byte the client sent is either in the buffer or still to come to ``ours``.
    ours.peer, theirs.peer = theirs, ours
    transport.set_protocol(ours)
    ours.connection_made(transport)
    early = first(bytes(client.buffer))
    if early:
        assert theirs.transport is not None
        theirs.transport.write(early)
    transport.resume_reading()
    try:
        await asyncio.gather(ours.done, theirs.done)
    except asyncio.CancelledError:
        ours._close_both()
        raise


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Waiting(asyncio.Protocol):
    """A new connection, read into a buffer until ``ready(buffer)`` says enough, then handed on.

    ``serve(self)`` runs as a task: it answers the client itself, or passes it to
    :func:`relay`. Without ``ready``, it is handed on at once. Reading is paused
    meanwhile where the loop allows (uvloop may still deliver): whatever comes is
    kept in :attr:`buffer` until the relay takes over.
    """

    def __init__(
        self,
        serve: Callable[[Waiting], Awaitable[None]],
        *,
        ready: Callable[[bytes], bool] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.serve, self.ready, self.timeout = serve, ready, timeout
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        _no_delay(transport)
        if self.ready is None:
            self._hand_on()
        else:
            asyncio.get_running_loop().call_later(self.timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None and self.ready is not None and self.ready(bytes(self.buffer)):
            self._hand_on()

    def eof_received(self) -> bool:
        if self.task is None:
            self._hand_on()  # what came is all there is: let ``serve`` answer it
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _hand_on(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self.task = asyncio.ensure_future(self.serve(self))

    def _too_slow(self) -> None:
        if self.task is None and self.transport is not None:
            self.transport.abort()


class TcpForwarder:
    """Listens on ``host:port``; every connection is relayed to what ``target`` names."""

    def __init__(self, host: str, port: int, target: Target, *, activity: Activity | None = None) -> None:
        self.host, self.port, self.target, self.activity = host, port, target, activity
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Waiting(self._serve), self.host, self.port, reuse_address=True)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, client: Waiting) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            address, port = await self.target()
            await relay(client, address, port, activity=self.activity)
        except Exception as exc:
            log.info("published port %d: cannot reach the sandbox (%s)", self.port, exc)
            if client.transport is not None:
                client.transport.abort()
        finally:
            self._conns.discard(task)
