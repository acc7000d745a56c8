"""Talking to the agent the raw way: Connect framing over httpx."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

STREAM_TYPE = "application/connect+json"


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


def auth(user: str | None) -> dict[str, str]:
    if user is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


class Frames:
    """Splits a byte stream into (flags, JSON) envelopes."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, dict[str, Any]]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 5:
            flags, length = struct.unpack(">BI", self.buffer[:5])
            if len(self.buffer) < 5 + length:
                break
            out.append((flags, json.loads(self.buffer[5 : 5 + length])))
            self.buffer = self.buffer[5 + length :]
        return out


def unary(
    client: httpx.Client,
    method: str,
    message: dict[str, Any],
    *,
    user: str | None = None,
) -> httpx.Response:
    return client.post(
        f"/{method}",
        content=json.dumps(message),
        headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1", **auth(user)},
    )


class StreamResult:
    def __init__(self, messages: list[dict[str, Any]], end: dict[str, Any]) -> None:
        self.messages = messages
        self.end = end
        self.events = [m["event"] for m in messages]

    @property
    def error(self) -> dict[str, Any] | None:
        return self.end.get("error")

    def output(self, kind: str) -> bytes:
        return b"".join(base64.b64decode(e["data"][kind]) for e in self.events if kind in e.get("data", {}))

    @property
    def exit(self) -> dict[str, Any]:
        ends = [e["end"] for e in self.events if "end" in e]
        assert len(ends) == 1, (self.events, self.end)
        return ends[0]


def server_stream(
    client: httpx.Client,
    method: str,
    message: dict[str, Any],
    *,
    user: str | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    response = client.post(
        f"/{method}",
        content=envelope(message),
        headers={"Content-Type": STREAM_TYPE, **auth(user), **(headers or {})},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == STREAM_TYPE
    frames = Frames().feed(response.content)
    assert frames and frames[-1][0] == 2, frames  # ends with an end-of-stream envelope
    assert all(flags == 0 for flags, _ in frames[:-1])
    return StreamResult([m for _, m in frames[:-1]], frames[-1][1])


@contextmanager
def live_stream(
    client: httpx.Client,
    method: str,
    message: dict[str, Any],
    *,
    user: str | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[Iterator[tuple[int, dict[str, Any]]]]:
    """The stream's envelopes as they arrive."""
    with client.stream(
        "POST",
        f"/{method}",
        content=envelope(message),
        headers={"Content-Type": STREAM_TYPE, **auth(user), **(headers or {})},
    ) as response:
        assert response.status_code == 200

        def frames() -> Iterator[tuple[int, dict[str, Any]]]:
            reader = Frames()
            for chunk in response.iter_raw():
                yield from reader.feed(chunk)

        yield frames()


def start_message(cmd: str, *args: str, **extra: Any) -> dict[str, Any]:
    process: dict[str, Any] = {"cmd": cmd, "args": list(args)}
    for key in ("envs", "cwd"):
        if key in extra:
            process[key] = extra.pop(key)
    return {"process": process, **extra}


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return start_message("/bin/sh", "-c", script, **extra)
