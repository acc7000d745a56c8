"""A minimal asyncio HTTP/1.1 server: keep-alive, chunked bodies both ways, streaming.

Just enough HTTP for the envd protocol: the request head is parsed into a
:class:`Request` whose body is read on demand (``Content-Length`` or chunked),
and a :class:`Response` is either sent whole or streamed as chunks. Each
connection is served by one coroutine, one request after the other.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from .log import log

MAX_HEAD = 64 * 1024
_SPLIT_AT = frozenset("?#\t\r\n")  # characters urlsplit acts on in a path (with a leading "//")
IDLE_TIMEOUT = 300.0

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.1 as we speak it."""


class Body:
    """The request body, read on demand; ``read`` returns ``b""`` at its end."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        length: int | None,
        chunked: bool,
        expect_continue: bool,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._chunked = chunked
        self._remaining = 0 if chunked else (length or 0)  # bytes left in body or chunk
        self._done = not chunked and not length
        self._expect_continue = expect_continue and not self._done

    @property
    def done(self) -> bool:
        """Whether the whole body has been read."""
        return self._done

    def client_closed(self) -> bool:
        """Whether the client has closed its side of the connection (after the body)."""
        return self._done and self._reader.at_eof()

    async def read(self, size: int = 256 * 1024) -> bytes:
        """Up to ``size`` bytes of the body, ``b""`` once it is exhausted."""
        if self._done:
            return b""
        if self._expect_continue:
            self._expect_continue = False
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._chunked and self._remaining == 0:
            await self._next_chunk()
            if self._done:
                return b""
        data = await self._reader.read(min(size, self._remaining))
        if not data:
            raise BadRequest("connection closed in the middle of the request body")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self._chunked:
                if await self._reader.readexactly(2) != b"\r\n":
                    raise BadRequest("malformed chunk")
            else:
                self._done = True
        return data

    async def _next_chunk(self) -> None:
        line = await self._reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("malformed chunk size") from None
        if size == 0:
            while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers: ignored
            self._done = True
        self._remaining = size

    async def read_all(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body; :class:`BadRequest` past ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise BadRequest("request body too large")
            parts.append(chunk)
        return b"".join(parts)

    async def discard(self, limit: int | None = 1024 * 1024) -> bool:
        """Skip what is left of the body; ``False`` if more than ``limit`` bytes were left (``None``: no limit)."""
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if limit is not None and total > limit:
                return False
        return True


class Request:
    """One parsed request head plus its :class:`Body`."""

    __slots__ = ("body", "headers", "method", "path", "query", "target", "version")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str], body: Body) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        if target.startswith("/") and not target.startswith("//") and not _SPLIT_AT.intersection(target):
            self.path, self.query = target, {}  # what urlsplit gives, without importing it (and ipaddress)
        else:
            from urllib.parse import parse_qs, urlsplit

            parts = urlsplit(target)
            self.path = parts.path
            self.query = parse_qs(parts.query, keep_blank_values=True)

    @property
    def disconnected(self) -> bool:
        """Whether the client went away (seen once the body has been read)."""
        return self.body.client_closed()

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


class Response:
    """Sends one response: whole with :meth:`send`, or :meth:`start` then :meth:`write` and :meth:`end`."""

    def __init__(self, writer: asyncio.StreamWriter, *, keep_alive: bool) -> None:
        self._writer = writer
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self._chunked = False
        self._held = b""  # body parts kept to go out with the next write, in one packet

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if not self.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a complete response."""
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if status != 204 and status >= 200:
            all_headers["Content-Length"] = str(len(body))
        self.started = True
        self._writer.write(self._head(status, all_headers) + body)
        self.finished = True
        await self._writer.drain()

    async def start(self, status: int, headers: dict[str, str], *, length: int | None = None) -> None:
        """Send the head of a streamed response: chunked unless ``length`` is known."""
        all_headers = dict(headers)
        if length is None:
            self._chunked = True
            all_headers["Transfer-Encoding"] = "chunked"
        else:
            all_headers["Content-Length"] = str(length)
        self.started = True
        self._writer.write(self._head(status, all_headers))

    def _frame(self, data: bytes) -> bytes:
        if self._chunked and data:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    async def write(self, data: bytes, *, hold: bool = False) -> None:
        """Send part of a streamed body and wait until the socket takes it.

        With ``hold`` it is kept and sent with the next write (or :meth:`end`):
        for a part that is known to be followed at once, so that both travel
        in one packet (each costs a round through gVisor's network stack).
        """
        if not data:
            return
        if hold:
            self._held += self._frame(data)
            return
        self._writer.write(self._held + self._frame(data))
        self._held = b""
        await self._writer.drain()

    async def end(self, data: bytes = b"") -> None:
        """Finish a streamed body, with ``data`` as its last part."""
        self._writer.write(self._held + self._frame(data) + (b"0\r\n\r\n" if self._chunked else b""))
        self._held = b""
        self.finished = True
        await self._writer.drain()


Handler = Callable[[Request, Response], Awaitable[None]]


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(f"unsupported protocol {version!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method, target, version, headers


async def _serve_connection(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                await Response(writer, keep_alive=False).send(431)
                return
            try:
                method, target, version, headers = _parse_head(head)
            except BadRequest as exc:
                await Response(writer, keep_alive=False).send(400, str(exc).encode())
                return
            connection = headers.get("connection", "").lower()
            keep_alive = version == "HTTP/1.1" and connection != "close"
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            try:
                length = None if chunked else int(headers.get("content-length", "0"))
            except ValueError:
                await Response(writer, keep_alive=False).send(400, b"bad content-length")
                return
            body = Body(
                reader,
                writer,
                length=length,
                chunked=chunked,
                expect_continue=headers.get("expect", "").lower() == "100-continue",
            )
            request = Request(method, target, version, headers, body)
            response = Response(writer, keep_alive=keep_alive)
            try:
                await handler(request, response)
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            except BadRequest as exc:
                if not response.started:
                    response.keep_alive = False
                    await response.send(400, str(exc).encode(), content_type="text/plain")
                return
            except Exception as exc:  # a bug in a handler must not kill the server
                log("request failed", method=method, path=request.path, error=repr(exc))
                if not response.started:
                    response.keep_alive = False
                    await response.send(500, b"internal error", content_type="text/plain")
                return
            if not response.finished or not response.keep_alive:
                return
            if not body.done and not await body.discard():
                return
    except (ConnectionError, asyncio.IncompleteReadError, BadRequest):
        pass
    finally:
        writer.close()


async def serve(handler: Handler, sock: socket.socket) -> asyncio.Server:
    """Serve ``handler`` on an already listening socket."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(handler, reader, writer)

    return await asyncio.start_server(on_connection, sock=sock, limit=MAX_HEAD)
