"""NDJSON streams: the wire format of every long answer (exec output, pulls, builds)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from corral.errors import CorralError

NDJSON = "application/x-ndjson"
T = TypeVar("T")


async def ndjson(
    items: AsyncIterator[dict[str, Any]],
    first: dict[str, Any] | None = None,
    *,
    judge: Callable[[CorralError], Awaitable[CorralError]] | None = None,
) -> AsyncIterator[bytes]:
    """Events as NDJSON lines; a failure after the 200 went out becomes a last ``error`` event.

    ``judge`` may answer another error for it, as the API's error handler does
    (``SandboxManager.call_failed``).
    """
    if first is not None:
        yield json.dumps(first).encode() + b"\n"
    try:
        async for item in items:
            yield json.dumps(item).encode() + b"\n"
    except CorralError as exc:
        error = await judge(exc) if judge is not None else exc
        yield json.dumps({"type": "error", **error.envelope()}).encode() + b"\n"


async def events_while(
    work: Callable[[Callable[[dict[str, Any]], None]], Awaitable[T]],
    result: Callable[[T], dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """Run ``work(emit)`` and yield what it emits as it goes, then ``result(its value)``.

    Should the reader go away (the client hung up), the work is cancelled.
    """
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(work(queue.put_nowait))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            yield result(task.result())
            return
    finally:
        if not task.done():
            task.cancel()
