"""The server's client for the agent inside a sandbox: envd's wire protocol.

Connect protocol v1 with the JSON codec: unary calls are plain JSON POSTs;
server streams are ``application/connect+json`` bodies of envelopes (one flag
byte, a 4-byte big-endian length, the JSON message), the last one flagged
``0x02`` with the end-of-stream status. Files move through plain
``GET/POST /files``. Connect errors become corral's error tree here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from corral.agent.process import SIGNAL_TEXT
from corral.errors import (
    AgentUnavailable,
    Conflict,
    CorralError,
    DiskFull,
    ExecTimeout,
    FileExists_,
    FileNotFound,
    InternalError,
    Interrupted,
    InvalidRequest,
    IsADirectory_,
    NotADirectory_,
    NotFound,
    PermissionDenied,
    ProcessNotFound,
)

CONNECT_TIMEOUT = 16.0
"""Seconds to reach an agent: four SYN retries (1+2+4+8 s), for a sandbox too busy to answer the first.
A dead agent is seen at once (its sandbox answers with a reset) or by the sandbox's state."""
END_STREAM = 0x02
_SIGNAL_NUMBERS = {text: number for number, text in SIGNAL_TEXT.items()}
_HEADER = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """One event of a process's life, as the agent reports it."""

    kind: str  # "start" | "stdout" | "stderr" | "pty" | "end"
    pid: int = 0
    data: bytes = b""
    exit_code: int | None = None
    error: str | None = None


def _user_header(user: str | None) -> dict[str, str]:
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def envelope(message: Mapping[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(message).encode()
    return _HEADER.pack(flags, len(payload)) + payload


def connect_error(status: int, body: Any, *, missing: type[NotFound] = NotFound) -> CorralError:
    """A Connect error (``{"code", "message"}``) as one of ours."""
    code = body.get("code", "") if isinstance(body, dict) else ""
    message = (body.get("message") if isinstance(body, dict) else None) or f"agent error {status}"
    lowered = message.lower()
    cls: type[CorralError]
    if code == "not_found" or status == 404:
        cls = missing
    elif code == "already_exists":
        cls = FileExists_
    elif code == "permission_denied" or status == 403:  # a Connect code, or /files's HTTP status
        cls = PermissionDenied
    elif code == "unauthenticated" or status == 401:
        cls = InvalidRequest  # the agent knows no such user: a bad request, not a failed API key
    elif status == 507 or "no space left on device" in lowered:
        cls = DiskFull
    elif code == "deadline_exceeded":
        cls = ExecTimeout
    elif code in ("unavailable", "unknown") and status >= 502:
        cls = AgentUnavailable
    elif "is a directory" in lowered:
        cls = IsADirectory_
    elif "not a directory" in lowered:
        cls = NotADirectory_
    elif code == "failed_precondition" or status == 409:
        cls = Conflict
    elif code in ("invalid_argument", "out_of_range") or status == 400:
        cls = InvalidRequest
    else:
        cls = InternalError
    return cls(message)


class AgentClient:
    """One sandbox's agent at ``base_url``. Cheap; holds a pooled HTTP client."""

    def __init__(self, base_url: str, *, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.streams = 0
        """Process streams open now (a command's output being read): the sandbox is in use."""

    # -- plumbing --------------------------------------------------------------

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        """A request's connection failures as ours (see :meth:`_failure`)."""
        try:
            yield
        except httpx.TransportError as exc:
            raise self._failure(exc) from exc
        except RuntimeError as exc:  # httpx refuses a closed client's requests so
            if not self.http.is_closed:
                raise
            raise self._failure(exc) from exc

    def _failure(self, exc: Exception, *, mid_stream: bool = False) -> CorralError:
        """A call's lost connection: cut by a checkpoint (the server closed the client for it), or the agent lost."""
        if self.http.is_closed:  # see SandboxManager.drop_agent_connections
            return Interrupted(
                "the call was cut: its sandbox was checkpointed (a snapshot, fork or hibernate) while it ran; "
                "make it again"
            )
        if mid_stream:
            return AgentUnavailable(f"lost the sandbox's agent mid-stream: {exc!r}")
        return AgentUnavailable(f"the sandbox's agent did not answer: {exc!r}")

    async def _unary(
        self,
        method: str,
        message: Mapping[str, Any],
        *,
        user: str | None = None,
        missing: type[NotFound] = NotFound,
    ) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/json",
            "Connect-Protocol-Version": "1",
            **_user_header(user),
        }
        with self._calling():
            resp = await self.http.post(f"{self.base_url}/{method}", json=message, headers=headers)
        body = _json_or_none(resp.content)
        if resp.status_code != 200:
            raise connect_error(resp.status_code, body, missing=missing)
        return body if isinstance(body, dict) else {}

    async def _stream(
        self,
        method: str,
        message: Mapping[str, Any],
        *,
        user: str | None = None,
        timeout_ms: int | None = None,
    ) -> AsyncIterator[ProcessEvent]:
        headers = {
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
            **_user_header(user),
        }
        if timeout_ms:
            headers["Connect-Timeout-Ms"] = str(timeout_ms)
        request = self.http.build_request(
            "POST",
            f"{self.base_url}/{method}",
            content=envelope(message),
            headers=headers,
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        )
        self.streams += 1
        try:
            async for event in self._events(request):
                yield event
        finally:
            self.streams -= 1

    async def _events(self, request: httpx.Request) -> AsyncIterator[ProcessEvent]:
        with self._calling():
            resp = await self.http.send(request, stream=True)
        try:
            if resp.status_code != 200:
                raise connect_error(resp.status_code, _json_or_none(await resp.aread()), missing=ProcessNotFound)
            buffer = b""
            chunks = resp.aiter_bytes()
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= _HEADER.size:
                    flags, length = _HEADER.unpack_from(buffer)
                    if len(buffer) < _HEADER.size + length:
                        break
                    payload = buffer[_HEADER.size : _HEADER.size + length]
                    buffer = buffer[_HEADER.size + length :]
                    body = _json_or_none(payload) or {}
                    if flags & END_STREAM:
                        # Read the body to its end (it follows at once), so the connection is reused:
                        # a new one costs a TCP handshake through the sandbox's network stack.
                        async for _ in chunks:
                            pass
                        if isinstance(body, dict) and body.get("error"):
                            raise connect_error(500, body["error"], missing=ProcessNotFound)
                        return
                    event = _process_event(body)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise self._failure(exc, mid_stream=True) from exc
        finally:
            await resp.aclose()

    # -- process.Process -------------------------------------------------------

    def start(
        self,
        argv: list[str],
        *,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        tag: str | None = None,
        stdin: bool = False,
        timeout_ms: int | None = None,
    ) -> AsyncIterator[ProcessEvent]:
        process: dict[str, Any] = {"cmd": argv[0], "args": argv[1:], "envs": dict(envs or {})}
        if cwd:
            process["cwd"] = cwd
        message: dict[str, Any] = {"process": process, "stdin": stdin}
        if tag:
            message["tag"] = tag
        return self._stream("process.Process/Start", message, user=user, timeout_ms=timeout_ms)

    def connect(self, selector: int | str) -> AsyncIterator[ProcessEvent]:
        return self._stream("process.Process/Connect", {"process": _selector(selector)})

    async def list_processes(self) -> list[dict[str, Any]]:
        body = await self._unary("process.Process/List", {})
        return list(body.get("processes", []))

    async def send_stdin(self, selector: int | str, data: bytes) -> None:
        await self._unary(
            "process.Process/SendInput",
            {"process": _selector(selector), "input": {"stdin": base64.b64encode(data).decode()}},
            missing=ProcessNotFound,
        )

    async def close_stdin(self, selector: int | str) -> None:
        await self._unary("process.Process/CloseStdin", {"process": _selector(selector)}, missing=ProcessNotFound)

    async def signal(self, selector: int | str, signal: str) -> None:
        await self._unary(
            "process.Process/SendSignal",
            {"process": _selector(selector), "signal": f"SIGNAL_{signal}"},
            missing=ProcessNotFound,
        )

    # -- filesystem.Filesystem -------------------------------------------------

    async def stat(self, path: str, *, user: str | None = None) -> dict[str, Any]:
        body = await self._unary("filesystem.Filesystem/Stat", {"path": path}, user=user, missing=FileNotFound)
        return dict(body.get("entry", {}))

    async def list_dir(self, path: str, *, depth: int = 1, user: str | None = None) -> list[dict[str, Any]]:
        body = await self._unary(
            "filesystem.Filesystem/ListDir",
            {"path": path, "depth": depth},
            user=user,
            missing=FileNotFound,
        )
        return list(body.get("entries", []))

    async def make_dir(self, path: str, *, user: str | None = None) -> dict[str, Any]:
        body = await self._unary("filesystem.Filesystem/MakeDir", {"path": path}, user=user, missing=FileNotFound)
        return dict(body.get("entry", {}))

    async def remove(self, path: str, *, recursive: bool, user: str | None = None) -> None:
        await self._unary(
            "filesystem.Filesystem/Remove",
            {"path": path, "recursive": recursive},
            user=user,
            missing=FileNotFound,
        )

    async def move(self, source: str, destination: str, *, user: str | None = None) -> dict[str, Any]:
        body = await self._unary(
            "filesystem.Filesystem/Move",
            {"source": source, "destination": destination},
            user=user,
            missing=FileNotFound,
        )
        return dict(body.get("entry", {}))

    async def chmod(self, path: str, mode: int, *, user: str | None = None) -> dict[str, Any]:
        body = await self._unary("corral.Agent/Chmod", {"path": path, "mode": mode}, user=user, missing=FileNotFound)
        return dict(body.get("entry", {}))

    # -- /files ----------------------------------------------------------------

    async def read_file(self, path: str, *, user: str | None = None) -> httpx.Response:
        """An open streaming response of the file's bytes; the caller closes it."""
        params = {"path": path, **({"username": user} if user else {})}
        request = self.http.build_request(
            "GET", f"{self.base_url}/files", params=params, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT)
        )
        with self._calling():
            resp = await self.http.send(request, stream=True)
        if resp.status_code != 200:
            body = _json_or_none(await resp.aread())
            await resp.aclose()
            raise connect_error(resp.status_code, body, missing=FileNotFound)
        return resp

    async def write_file(self, path: str, content: AsyncIterator[bytes], *, user: str | None = None) -> None:
        params = {"path": path, **({"username": user} if user else {})}
        with self._calling():
            resp = await self.http.post(
                f"{self.base_url}/files",
                params=params,
                content=content,
                headers={"Content-Type": "application/octet-stream"},
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
            )
        if resp.status_code != 200:
            raise connect_error(resp.status_code, _json_or_none(resp.content), missing=FileNotFound)

    async def health(self) -> bool:
        try:
            resp = await self.http.get(f"{self.base_url}/health", timeout=1.0)
        except httpx.TransportError:
            return False
        return resp.status_code in (200, 204)


def _selector(selector: int | str) -> dict[str, Any]:
    return {"pid": selector} if isinstance(selector, int) else {"tag": selector}


def _json_or_none(raw: bytes) -> Any:
    try:
        value = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return _without_lone_surrogates(value) if b"\\ud" in raw or b"\\uD" in raw else value


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings as U+FFFD.

    The agent gives a file name that is not UTF-8 as Python reads it: each
    byte that is not UTF-8 as a lone surrogate (``\\udcff``), which JSON can
    carry but no answer of ours can. Such a name shows U+FFFD for each.
    """
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def _process_event(message: Any) -> ProcessEvent | None:
    event = message.get("event") if isinstance(message, dict) else None
    if not isinstance(event, dict):
        return None
    if "start" in event:
        return ProcessEvent("start", pid=int(event["start"].get("pid", 0)))
    if "data" in event:
        for kind in ("stdout", "stderr", "pty"):
            if kind in event["data"]:
                return ProcessEvent(kind, data=base64.b64decode(event["data"][kind]))
        return None
    if "end" in event:
        end = event["end"]
        code = int(end.get("exitCode", 0))
        status = str(end.get("status", ""))
        if not end.get("exited", False) and status.startswith("signal: "):  # proto3 JSON omits false
            # envd says -1 for a signalled process; shells say 128 + the signal's number.
            code = 128 + _SIGNAL_NUMBERS.get(status.removeprefix("signal: "), 0)
        error = end.get("error") or None
        return ProcessEvent("end", exit_code=code, error=None if error == status else error)
    return None  # keepalive
