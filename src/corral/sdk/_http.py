"""The SDK's one door to the server: a sync and an async client over httpx.

Both twins send the same :class:`Call` (built by :mod:`corral.sdk._routes`),
turn an error envelope into its :mod:`corral.errors` class, and a transport
failure into :class:`ServerUnavailable`. Only the I/O differs between them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import certifi
import httpx

from corral.errors import error_from_envelope
from corral.sdk.config import ConnectionConfig
from corral.sdk.exceptions import ServerUnavailable

__all__ = ["AsyncHTTP", "Call", "SyncHTTP", "async_transport", "sync_transport"]

T = TypeVar("T")

sync_transport: httpx.BaseTransport | None = None
"""When set, every sync client sends through it instead of the network (a test seam)."""

async_transport: httpx.AsyncBaseTransport | None = None
"""When set, every async client sends through it instead of the network (a test seam)."""

Content = bytes | Iterable[bytes] | AsyncIterable[bytes]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (tens of ms), and
    every Sandbox has a client of its own."""
    return ssl.create_default_context(cafile=certifi.where())


def _tls(config: ConnectionConfig) -> ssl.SSLContext | bool:
    """What the client verifies a server with: for a plain-HTTP server (the default, on
    loopback) reached without a proxy, nothing, so a short-lived process (a CLI call) does
    not load the CA bundle for a handshake it never makes. The client sends only to
    ``config.url`` and follows no redirect, so it never speaks TLS then; through a proxy
    it might (an ``https://`` proxy), and the proxy's certificate is verified."""
    proxied = any(scheme != "no" for scheme in urllib.request.getproxies())  # "no": NO_PROXY's list
    if httpx.URL(config.url).scheme == "https" or proxied:
        return _tls_context()
    return False


LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=20)
"""No cap on connections at once: every background command's handle holds one while it
follows the output, so a cap (httpx's default is 100) would make every other call of that
many handles' Sandbox wait for a free one, and fail."""

SEND_PIECE = 1 << 20
"""A whole body larger than this is sent by the blocking client in pieces (see :func:`_in_pieces`)."""


def _in_pieces(call: Call[T]) -> Call[T]:
    """``call`` with a large whole body turned into a file object, which httpx sends 64 KiB
    at a time with its length known. Handed one ``bytes``, httpx's blocking transport copies
    what is left of it after every send: 300 MiB took 6 s to reach an agent on loopback."""
    content = call.content
    if isinstance(content, bytes) and len(content) > SEND_PIECE:
        return dataclasses.replace(call, content=io.BytesIO(content))
    return call


def _raw(response: httpx.Response) -> httpx.Response:
    return response


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, and how to read its answer: what both twins send."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    content: Content | None = None
    extra_time: float | None = 0.0
    """Seconds the answer may take beyond the request timeout; ``None``: no read limit."""
    parse: Callable[[httpx.Response], T] = _raw  # type: ignore[assignment]


def _timeout(config: ConnectionConfig, extra_time: float | None) -> httpx.Timeout:
    base = config.request_timeout
    read = None if base is None or extra_time is None else base + extra_time
    return httpx.Timeout(base, read=read)


def _build(client: httpx.Client | httpx.AsyncClient, config: ConnectionConfig, call: Call[T]) -> httpx.Request:
    return client.build_request(
        call.method,
        call.path,
        params=list(call.params) or None,
        json=call.json,
        content=call.content,
        timeout=_timeout(config, call.extra_time),
    )


def _check(response: httpx.Response) -> None:
    """Raise the error a (fully read) response carries, if any."""
    if response.is_success:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise error_from_envelope(response.status_code, body)


def _unavailable(config: ConnectionConfig, exc: httpx.TransportError) -> ServerUnavailable:
    return ServerUnavailable(
        f"cannot reach the corral server at {config.url}: {type(exc).__name__}: {exc}",
        details={"url": config.url},
    )


class SyncHTTP:
    """A blocking client for one server; close it when done."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client = httpx.Client(
            base_url=config.url,
            headers=config.headers,
            timeout=config.request_timeout,
            limits=LIMITS,
            transport=sync_transport,
            verify=_tls(config),
        )

    def call(self, call: Call[T]) -> T:
        """Send ``call``, read the whole answer, and parse it."""
        response = self.open(call)
        try:
            response.read()
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        finally:
            response.close()
        return call.parse(response)

    def open(self, call: Call[Any]) -> httpx.Response:
        """Send ``call`` and answer the response with its body still unread; close it."""
        try:
            response = self._client.send(_build(self._client, self.config, _in_pieces(call)), stream=True)
            if not response.is_success:
                try:
                    response.read()
                finally:
                    response.close()
                _check(response)
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        return response

    @contextmanager
    def stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        """``open`` as a context manager; a transport failure inside it is mapped too."""
        response = self.open(call)
        with self.stream_of(response):
            yield response

    def iter_bytes(self, response: httpx.Response) -> Iterator[bytes]:
        """The body of an ``open`` response, chunk by chunk; closes it at the end."""
        with self.stream_of(response):
            yield from response.iter_bytes()

    @contextmanager
    def stream_of(self, response: httpx.Response) -> Iterator[None]:
        """Close ``response`` at the end; map a transport failure while reading it."""
        try:
            yield
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        finally:
            response.close()

    @staticmethod
    def hang_up(response: httpx.Response) -> None:
        """End an ``open`` response from another thread: a read of it blocked there returns.

        Closing the socket would not wake that read (it keeps the socket open until it
        returns); shutting it down does, and the server sees the connection end. A
        response with no socket (from a test transport) is closed instead."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            response.close()
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._client.close()


class AsyncHTTP:
    """The async twin of :class:`SyncHTTP`."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.url,
            headers=config.headers,
            timeout=config.request_timeout,
            limits=LIMITS,
            transport=async_transport,
            verify=_tls(config),
        )

    async def call(self, call: Call[T]) -> T:
        response = await self.open(call)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        finally:
            await response.aclose()
        return call.parse(response)

    async def open(self, call: Call[Any]) -> httpx.Response:
        try:
            response = await self._client.send(_build(self._client, self.config, call), stream=True)
            if not response.is_success:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                _check(response)
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        return response

    @asynccontextmanager
    async def stream(self, call: Call[Any]) -> AsyncIterator[httpx.Response]:
        response = await self.open(call)
        async with self.stream_of(response):
            yield response

    async def iter_bytes(self, response: httpx.Response) -> AsyncIterator[bytes]:
        async with self.stream_of(response):
            async for chunk in response.aiter_bytes():
                yield chunk

    @asynccontextmanager
    async def stream_of(self, response: httpx.Response) -> AsyncIterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise _unavailable(self.config, exc) from exc
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
