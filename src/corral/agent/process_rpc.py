"""envd's ``process.Process`` service, served over a :class:`ProcessManager`.

``Start`` and ``Connect`` stream a ``start`` event (the pid), then ``data``
events (stdout/stderr/pty bytes, base64 in JSON) as output arrives, and an
``end`` event; an idle stream gets a ``keepalive`` event every
``Keepalive-Ping-Interval`` seconds (90 by default). A ``Start`` call's
``Connect-Timeout-Ms`` is the process's lifetime: when it passes the process
group is killed and the stream ends with ``deadline_exceeded``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator

from .connect import Call, Message, Router, RpcError, ServerStream, as_message, field
from .process import Exit, ManagedProcess, ProcessManager, Subscriber, parse_signal
from .users import User, UserDb, username_from_authorization

DEFAULT_KEEPALIVE = 90.0
KEEPALIVE_EVENT: Message = {"event": {"keepalive": {}}}


def call_user(users: UserDb, call: Call) -> User:
    """The user a call acts as, from its ``Authorization: Basic`` header."""
    try:
        return users.resolve(username_from_authorization(call.header("authorization")))
    except LookupError as exc:
        raise RpcError("unauthenticated", str(exc)) from None


def decode_bytes(value: object) -> bytes:
    """Protobuf JSON ``bytes``: standard or URL-safe base64, padded or not."""
    if not isinstance(value, str):
        raise RpcError("invalid_argument", "expected base64 data")
    text = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise RpcError("invalid_argument", "malformed base64 data") from None


def _keepalive_interval(call: Call) -> float:
    try:
        seconds = float(call.header("keepalive-ping-interval") or DEFAULT_KEEPALIVE)
    except ValueError:
        return DEFAULT_KEEPALIVE
    return seconds if seconds > 0 else DEFAULT_KEEPALIVE


def _input_bytes(message: Message) -> bytes:
    data = as_message(field(message, "input"), "input")
    value = field(data, "stdin")
    if value is None:
        value = field(data, "pty")
    return decode_bytes(value) if value is not None else b""


class ProcessService:
    """Handlers for ``/process.Process/*``."""

    def __init__(self, manager: ProcessManager, users: UserDb) -> None:
        self._manager = manager
        self._users = users

    def register(self, router: Router) -> None:
        prefix = "/process.Process/"
        router.server_streaming(prefix + "Start", self.start)
        router.server_streaming(prefix + "Connect", self.connect)
        router.unary(prefix + "List", self.list)
        router.unary(prefix + "SendInput", self.send_input)
        router.client_streaming(prefix + "StreamInput", self.stream_input)
        router.unary(prefix + "CloseStdin", self.close_stdin)
        router.unary(prefix + "SendSignal", self.send_signal)
        router.unary(prefix + "Update", self.update)

    def _process(self, message: Message) -> ManagedProcess:
        return self._manager.find(as_message(field(message, "process"), "process"))

    async def start(self, call: Call, message: Message, stream: ServerStream) -> None:
        user = call_user(self._users, call)
        timeout = call.timeout
        subscriber = Subscriber()
        process = await self._manager.start(user, message, subscriber)
        deadline = None
        if timeout is not None:
            process.set_deadline(timeout)
            deadline = asyncio.get_running_loop().time() + timeout
        await self._pump(call, process, subscriber, stream, deadline)

    async def connect(self, call: Call, message: Message, stream: ServerStream) -> None:
        process = self._process(message)
        timeout = call.timeout
        subscriber = Subscriber()
        process.subscribe(subscriber)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        await self._pump(call, process, subscriber, stream, deadline)

    async def _pump(
        self,
        call: Call,
        process: ManagedProcess,
        subscriber: Subscriber,
        stream: ServerStream,
        deadline: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        keepalive = _keepalive_interval(call)
        try:
            await stream.send({"event": {"start": {"pid": process.pid}}})
            while True:
                timeout = keepalive
                if deadline is not None:
                    timeout = min(timeout, deadline - loop.time())
                    if timeout <= 0:
                        raise RpcError("deadline_exceeded", "the call's deadline passed")
                event = await subscriber.next(timeout)
                if event is None:
                    if deadline is None or loop.time() < deadline:
                        await stream.send(KEEPALIVE_EVENT)
                    continue
                if isinstance(event, Exit):
                    await stream.send({"event": {"end": event.to_json()}}, last=True)
                    return
                kind, data = event
                encoded = base64.b64encode(data).decode("ascii")
                await stream.send({"event": {"data": {kind: encoded}}})
        finally:
            process.unsubscribe(subscriber)

    async def list(self, call: Call, message: Message) -> Message:
        return {"processes": [process.info() for process in self._manager.processes()]}

    async def send_input(self, call: Call, message: Message) -> Message:
        process = self._process(message)
        await process.write_input(_input_bytes(message))
        return {}

    async def stream_input(self, call: Call, messages: AsyncIterator[Message]) -> Message:
        process: ManagedProcess | None = None
        async for message in messages:
            if (start := field(message, "start")) is not None:
                process = self._process(as_message(start, "start"))
            elif (data := field(message, "data")) is not None:
                if process is None:
                    raise RpcError("failed_precondition", "the first message must be start")
                await process.write_input(_input_bytes(as_message(data, "data")))
        return {}

    async def close_stdin(self, call: Call, message: Message) -> Message:
        await self._process(message).close_stdin()
        return {}

    async def send_signal(self, call: Call, message: Message) -> Message:
        process = self._process(message)
        process.send_signal(parse_signal(field(message, "signal")))
        return {}

    async def update(self, call: Call, message: Message) -> Message:
        process = self._process(message)
        pty = field(message, "pty")
        if pty is not None:
            size = as_message(field(as_message(pty, "pty"), "size"), "pty.size")
            try:
                process.resize(int(field(size, "cols", 0)), int(field(size, "rows", 0)))
            except (TypeError, ValueError):
                raise RpcError("invalid_argument", "malformed pty size") from None
        return {}
