"""The preview proxy: ``http://{port}-{sandbox_id}.{domain}:{proxy_port}/...`` to that port in the sandbox.

It reads only a connection's first request head: the host name says where
the connection goes, the access token (header ``X-Corral-Preview-Token``,
query parameter ``corral_preview_token`` or the cookie of that name) says
whether it may. Then it hands the head on, without the token, and splices
the connection to the sandbox: everything after (bodies, streaming,
keep-alive requests, WebSocket frames) is bytes it does not look at. A
token given in the query of a GET is turned into a cookie by a redirect, so
a link with the token works in a browser and the app never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from corral.net import proxy

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-corral-preview-token"
TOKEN_NAME = "corral_preview_token"
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0


class PreviewError(Exception):
    """Answered to the client as a small page with this status."""

    def __init__(self, status: int, title: str, message: str, *, extra: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.extra = status, title, message, extra or []


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request asks the proxy for."""

    sandbox_id: str
    port: int
    token: str | None


Route = Callable[[Wanted], Awaitable[str]]
"""Checks a request and returns the sandbox's address; raises :class:`PreviewError` to refuse."""
Touch = Callable[[str], None]
"""Told a sandbox's id while its preview connections carry bytes (at most once a second each)."""

_REASONS = {302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 431: "Request Header Fields Too Large", 502: "Bad Gateway"}  # fmt: skip


class PreviewProxy:
    def __init__(self, *, host: str, port: int, domain: str, route: Route, touch: Touch | None = None) -> None:
        self.host, self.port, self.domain = host, port, domain.lower().strip(".")
        self.route, self.touch = route, touch
        self._host_re = re.compile(rf"^(\d{{1,5}})-([a-z0-9]+)\.{re.escape(self.domain)}(?::\d+)?$", re.IGNORECASE)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: proxy.Waiting(self._serve, ready=_head_complete, timeout=HEAD_TIMEOUT),
            self.host,
            self.port,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()

    async def _serve(self, client: proxy.Waiting) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._handle(client)
        except PreviewError as exc:
            if client.transport is not None:
                body = _page(exc.title, exc.message) if exc.message else b""
                _answer(client.transport, exc.status, body, extra=exc.extra)
        except Exception:
            log.exception("preview proxy: a connection failed")
            if client.transport is not None:
                client.transport.abort()
        finally:
            self._conns.discard(task)

    async def _handle(self, client: proxy.Waiting) -> None:
        received = bytes(client.buffer)
        end = received.find(b"\r\n\r\n")
        if end < 0:
            if len(received) >= MAX_HEAD:
                raise PreviewError(431, "Request too large", "The request's head is over 64 KiB.")
            raise PreviewError(400, "Bad request", "The connection ended before a whole request head came.")
        head = _Head.parse(received[: end + 4])
        host = head.get("host") or ""
        match = self._host_re.match(host)
        if not match:
            raise PreviewError(
                404,
                "Not a preview address",
                f"Preview addresses look like {{port}}-{{sandbox_id}}.{self.domain}:{self.port}; got {host!r}.",
            )
        port, sandbox_id = int(match.group(1)), match.group(2).lower()
        if not 1 <= port <= 65535:
            raise PreviewError(404, "No such port", f"{port} is not a TCP port.")
        from_query = head.take_query_token()
        token = head.take_header(TOKEN_HEADER) or head.take_cookie_token() or from_query
        address = await self.route(Wanted(sandbox_id=sandbox_id, port=port, token=token))
        if from_query and from_query == token and head.method in ("GET", "HEAD"):
            cookie = f"{TOKEN_NAME}={from_query}; Path=/; HttpOnly; SameSite=Lax"
            raise PreviewError(302, "Found", "", extra=[("Location", head.target), ("Set-Cookie", cookie)])
        peer = client.transport.get_extra_info("peername") if client.transport else None
        head.headers += [
            ("X-Forwarded-For", str(peer[0]) if peer else ""),
            ("X-Forwarded-Host", host),
            ("X-Forwarded-Proto", "http"),
        ]
        touch = self.touch
        try:
            await proxy.relay(
                client,
                address,
                port,
                first=lambda sent: head.encode() + sent[end + 4 :],  # the head without the token, then the rest
                activity=(lambda: touch(sandbox_id)) if touch else None,
            )
        except (OSError, TimeoutError):
            raise PreviewError(
                502,
                "Nothing is listening",
                f"Nothing in sandbox {sandbox_id} accepts connections on port {port}. "
                "Start a server there that listens on 0.0.0.0 (not only 127.0.0.1).",
            ) from None


def _head_complete(received: bytes) -> bool:
    return b"\r\n\r\n" in received or len(received) >= MAX_HEAD


class _Head:
    """A request head: its line and headers, in order, as they came (names compared case-insensitively)."""

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        try:
            lines = raw.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = []
            for line in lines[1:]:
                if line:
                    name, sep, value = line.partition(":")
                    if not sep or not name or name != name.strip():
                        raise ValueError(line)
                    headers.append((name, value.strip()))
        except ValueError:
            raise PreviewError(400, "Bad request", "This is not an HTTP/1.1 request.") from None
        if not version.startswith("HTTP/1."):
            raise PreviewError(400, "Bad request", "The preview proxy speaks HTTP/1.x.")
        return cls(method, target, version, headers)

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def take_header(self, name: str) -> str | None:
        value = self.get(name)
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name]
        return value

    def take_query_token(self) -> str | None:
        parts = urlsplit(self.target)
        if TOKEN_NAME not in parts.query:
            return None
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        token = next((v for k, v in pairs if k == TOKEN_NAME), None)
        query = urlencode([(k, v) for k, v in pairs if k != TOKEN_NAME])
        self.target = parts.path + (f"?{query}" if query else "")
        return token

    def take_cookie_token(self) -> str | None:
        raw = self.get("cookie")
        if raw is None or TOKEN_NAME not in raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            jar.load(raw)
        token = jar[TOKEN_NAME].value if TOKEN_NAME in jar else None
        rest = "; ".join(p for p in (c.strip() for c in raw.split(";")) if p and not p.startswith(f"{TOKEN_NAME}="))
        self.headers = [(n, v) for n, v in self.headers if n.lower() != "cookie"]
        if rest:
            self.headers.append(("Cookie", rest))
        return token

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}", *(f"{n}: {v}" for n, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _page(title: str, message: str) -> bytes:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:40em;margin:4em auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p><p><small>corral preview proxy</small></p>"
        "</body></html>\n"
    ).encode()


def _answer(client: asyncio.Transport, status: int, body: bytes, *, extra: list[tuple[str, str]] | None = None) -> None:
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *(extra or []),
    ]
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    if not client.is_closing():
        client.write(head.encode("latin-1") + b"\r\n" + body)
        client.close()  # after what was written is sent
