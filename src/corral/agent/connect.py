"""Connect protocol v1 with the JSON codec, server side.

Three call shapes are served, all as ``POST /<package.Service>/<Method>``:

- unary: ``application/json`` body in, ``application/json`` body out; errors
  are ``{"code": "not_found", "message": ...}`` with the matching HTTP status;
- server streaming: ``application/connect+json``; the request is one
  envelope, the response is ``200`` and a chunked series of envelopes (1 flag
  byte, 4-byte big-endian length, JSON), closed by an end-of-stream envelope
  (flag ``0x02``) holding ``{}`` or ``{"error": {"code", "message"}}``;
- client streaming: envelopes in, one envelope plus end-of-stream out.

Messages are plain dicts in protobuf's canonical JSON form (lowerCamelCase
names; bytes as base64); :func:`field` also accepts the proto field names.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .http import BadRequest, Request, Response
from .log import log

Message = dict[str, Any]

END_STREAM = 0x02
COMPRESSED = 0x01
MAX_MESSAGE = 16 * 1024 * 1024

# https://connectrpc.com/docs/protocol/#error-codes
STATUS_OF_CODE = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class RpcError(Exception):
    """An error sent to the client as a Connect error ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> Message:
        return {"code": self.code, "message": self.message}


def field(message: Message, name: str, default: Any = None) -> Any:
    """``message[name]`` by its JSON (camelCase) or proto (snake_case) name."""
    if name in message:
        return message[name]
    if "_" in name:
        head, *rest = name.split("_")
        camel = head + "".join(part.title() for part in rest)
        if camel in message:
            return message[camel]
    return default


def as_message(value: Any, what: str) -> Message:
    """``value`` if it is a JSON object (``{}`` for null), else ``invalid_argument``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RpcError("invalid_argument", f"{what} must be an object")
    return value


def pack(message: Message, flags: int = 0) -> bytes:
    """One envelope holding ``message``."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">BI", flags, len(data)) + data


def end_of_stream(error: RpcError | None = None) -> bytes:
    """The envelope that ends a stream, with ``error`` if the call failed."""
    return pack({"error": error.to_json()} if error else {}, END_STREAM)


class EnvelopeReader:
    """Splits a byte stream into ``(flags, payload)`` envelopes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 5:
            flags, length = struct.unpack_from(">BI", self._buffer)
            if length > MAX_MESSAGE:
                raise RpcError("resource_exhausted", "message too large")
            if len(self._buffer) < 5 + length:
                break
            out.append((flags, bytes(self._buffer[5 : 5 + length])))
            del self._buffer[: 5 + length]
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


def _decode(payload: bytes, flags: int = 0) -> Message:
    if flags & COMPRESSED:
        raise RpcError("unimplemented", "compressed messages are not supported")
    if not payload.strip():
        return {}
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise RpcError("invalid_argument", f"malformed JSON message: {exc}") from None
    return as_message(value, "message")


class Call:
    """What a handler knows about the call besides its message: the HTTP request."""

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name.lower())

    @property
    def timeout(self) -> float | None:
        """The client's deadline in seconds (``Connect-Timeout-Ms``), if it sent one."""
        value = self.header("connect-timeout-ms")
        if not value:
            return None
        try:
            millis = int(value)
        except ValueError:
            raise RpcError("invalid_argument", "malformed Connect-Timeout-Ms") from None
        return millis / 1000 if millis > 0 else None


class ServerStream:
    """The sending side of a server-streaming call."""

    def __init__(self, response: Response) -> None:
        self._response = response

    async def send(self, message: Message, *, last: bool = False) -> None:
        """Send ``message``; ``last``: nothing follows it but the end of the stream (sent together)."""
        await self._response.write(pack(message), hold=last)


Unary = Callable[[Call, Message], Awaitable[Message]]
ServerStreaming = Callable[[Call, Message, ServerStream], Awaitable[None]]
ClientStreaming = Callable[[Call, AsyncIterator[Message]], Awaitable[Message]]

_JSON = "application/json"
_STREAM_JSON = "application/connect+json"


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Router:
    """Maps ``/<package.Service>/<Method>`` paths to handlers."""

    def __init__(self) -> None:
        self._unary: dict[str, Unary] = {}
        self._server_streaming: dict[str, ServerStreaming] = {}
        self._client_streaming: dict[str, ClientStreaming] = {}

    def unary(self, path: str, handler: Unary) -> None:
        self._unary[path] = handler

    def server_streaming(self, path: str, handler: ServerStreaming) -> None:
        self._server_streaming[path] = handler

    def client_streaming(self, path: str, handler: ClientStreaming) -> None:
        self._client_streaming[path] = handler

    def __contains__(self, path: str) -> bool:
        return path in self._unary or path in self._server_streaming or path in self._client_streaming

    async def handle(self, request: Request, response: Response) -> None:
        """Serve one call; the caller has checked ``request.path in self``."""
        path = request.path
        if request.method != "POST":
            await _send_error(response, RpcError("unimplemented", "use POST"), status=405)
            return
        encoding = request.headers.get("connect-content-encoding") or request.headers.get("content-encoding")
        if encoding and encoding.lower() != "identity":
            await _send_error(response, RpcError("unimplemented", f"encoding {encoding!r}"))
            return
        call = Call(request)
        if path in self._unary:
            await self._handle_unary(self._unary[path], call, response)
        elif path in self._server_streaming:
            await self._handle_server_streaming(self._server_streaming[path], call, response)
        else:
            await self._handle_client_streaming(self._client_streaming[path], call, response)

    async def _handle_unary(self, handler: Unary, call: Call, response: Response) -> None:
        if _media_type(call.request) != _JSON:
            await _send_error(response, RpcError("unimplemented", "only the JSON codec is served"), status=415)
            return
        try:
            message = _decode(await call.request.body.read_all(MAX_MESSAGE))
            result = await handler(call, message)
        except RpcError as exc:
            await _send_error(response, exc)
            return
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            await _send_error(response, _internal(call, exc))
            return
        body = json.dumps(result, separators=(",", ":")).encode()
        await response.send(200, body, content_type=_JSON)

    async def _handle_server_streaming(self, handler: ServerStreaming, call: Call, response: Response) -> None:
        if _media_type(call.request) != _STREAM_JSON:
            await _send_error(response, RpcError("unimplemented", "only the JSON codec is served"), status=415)
            return
        error: RpcError | None = None
        try:
            envelopes = EnvelopeReader().feed(await call.request.body.read_all(MAX_MESSAGE + 5))
            if len(envelopes) != 1:
                raise RpcError("invalid_argument", "expected exactly one request message")
            flags, payload = envelopes[0]
            message = _decode(payload, flags)
        except (RpcError, BadRequest) as exc:
            message = {}
            error = exc if isinstance(exc, RpcError) else RpcError("invalid_argument", str(exc))
        await response.start(200, {"Content-Type": _STREAM_JSON})
        if error is None:
            try:
                await handler(call, message, ServerStream(response))
            except RpcError as exc:
                error = exc
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                error = _internal(call, exc)
        await response.end(end_of_stream(error))

    async def _handle_client_streaming(self, handler: ClientStreaming, call: Call, response: Response) -> None:
        if _media_type(call.request) != _STREAM_JSON:
            await _send_error(response, RpcError("unimplemented", "only the JSON codec is served"), status=415)
            return

        async def messages() -> AsyncIterator[Message]:
            reader = EnvelopeReader()
            while chunk := await call.request.body.read():
                for flags, payload in reader.feed(chunk):
                    if flags & END_STREAM:
                        return
                    yield _decode(payload, flags)
            if reader.pending:
                raise RpcError("invalid_argument", "truncated message")

        error: RpcError | None = None
        result: Message = {}
        try:
            result = await handler(call, messages())
        except RpcError as exc:
            error = exc
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            error = _internal(call, exc)
        if not call.request.body.done:
            await call.request.body.discard(limit=MAX_MESSAGE)
        await response.start(200, {"Content-Type": _STREAM_JSON})
        if error is None:
            await response.write(pack(result), hold=True)
        await response.end(end_of_stream(error))


# A client gone or talking nonsense: the HTTP layer ends the connection.
_PASS_THROUGH = (ConnectionError, asyncio.IncompleteReadError, BadRequest)


def _internal(call: Call, exc: Exception) -> RpcError:
    """An unexpected failure in a handler: logged, and sent as ``internal``."""
    log("call failed", path=call.request.path, error=repr(exc))
    return RpcError("internal", f"{type(exc).__name__}: {exc}")


async def _send_error(response: Response, error: RpcError, *, status: int | None = None) -> None:
    body = json.dumps(error.to_json()).encode()
    code_status = STATUS_OF_CODE.get(error.code, 500)
    await response.send(status or code_status, body, content_type=_JSON)
