"""What a command's stdin may be fed from, and how it is written: in batches as it comes.

``commands.run(..., stdin=...)`` takes text (sent with the request, as before)
or anything else that holds bytes or text: bytes, a file object, an iterable of
chunks (and, for the async SDK, an async iterable). Such a stdin is written to
the process as it is read, after the process has started, and then closed: a
pipe from a file, a tarball or a program's output, of any size.

The source is read apart from the writes (a thread, or a task), and each write
takes all that has been read since the last one, up to :data:`PIECE`: a million
one-line chunks go in a few hundred writes, and a chunk that comes alone (a line
typed into a pipe) goes at once.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import IO, Any

from corral.errors import Conflict, InvalidRequest, ProcessNotFound

PIECE = 256 * 1024
"""Bytes per write at most: base64 in a JSON body, well under the server's JSON limit."""

AHEAD = 64
"""Chunks read ahead of the writes at most (so a fast source is not read into memory whole)."""

StdinSource = str | bytes | bytearray | memoryview | IO[bytes] | IO[str] | Iterable[bytes] | Iterable[str]
"""Text, bytes, a file object, or an iterable of text or byte chunks."""

AsyncStdinSource = StdinSource | AsyncIterable[bytes] | AsyncIterable[str]

_END = object()


def reader_gone(exc: Exception) -> bool:
    """Whether a write failed because the process ended or closed its stdin: the rest is
    dropped, as a pipe's writer stops once its reader has gone. Any other failure (a
    checkpoint cutting the write, the sandbox gone) is the feeder's error."""
    return isinstance(exc, ProcessNotFound) or (isinstance(exc, Conflict) and exc.code == Conflict.code)


def as_bytes(chunk: object) -> bytes:
    if isinstance(chunk, str):
        return chunk.encode()
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    raise InvalidRequest(f"cannot write a {type(chunk).__name__} to stdin: give str, bytes, or a file of them")


def split(data: str | bytes) -> Iterator[bytes]:
    """``data`` in pieces of at most :data:`PIECE` bytes."""
    raw = as_bytes(data)
    for start in range(0, len(raw), PIECE):
        yield raw[start : start + PIECE]


def writes(data: str | bytes) -> Iterator[str | bytes]:
    """``data`` as writes: text that fits in one goes as text, the rest as bytes."""
    if isinstance(data, str) and len(data) <= PIECE // 4:  # 4 bytes a character at most in UTF-8
        yield data
    else:
        yield from split(data)


def _read_some(reader: IO[Any]) -> Any:
    """What ``reader`` has now, up to a piece: ``read1`` returns what a pipe holds without
    waiting for a whole piece, so a command sees its input as it comes."""
    read1 = getattr(reader, "read1", None)
    return read1(PIECE) if read1 is not None else reader.read(PIECE)


def _chunks(source: StdinSource) -> Iterator[bytes]:
    if isinstance(source, str | bytes | bytearray | memoryview):
        yield from split(as_bytes(source))
    elif hasattr(source, "read"):
        while chunk := _read_some(source):  # type: ignore[arg-type]
            yield from split(as_bytes(chunk))
    elif isinstance(source, Iterable):
        for chunk in source:
            yield from split(as_bytes(chunk))
    else:
        raise InvalidRequest(f"cannot write a {type(source).__name__} to stdin: give str, bytes, or a file of them")


class _Gather:
    """Chunks joined while the writer is busy: handed on at once when it waits (``idle``)
    or when a piece is full, so each write takes all that came since the last."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes, *, idle: bool) -> list[bytes]:
        """What is ready to hand on once ``chunk`` (at most a piece) is added: none, one or two."""
        ready = []
        if self.parts and self.size + len(chunk) > PIECE:
            ready.append(self._join())
        self.parts.append(chunk)
        self.size += len(chunk)
        if idle or self.size >= PIECE:
            ready.append(self._join())
        return ready

    def take(self) -> list[bytes]:
        """What is left."""
        return [self._join()] if self.parts else []

    def _join(self) -> bytes:
        joined = b"".join(self.parts)
        self.parts, self.size = [], 0
        return joined


def _read_into(source: StdinSource, ahead: queue.Queue[object]) -> None:
    """A reader thread: ``source``'s chunks into ``ahead``, then the end (or the error)."""
    gather = _Gather()
    try:
        for chunk in _chunks(source):
            for ready in gather.add(chunk, idle=ahead.empty()):
                ahead.put(ready)
    except Exception as exc:
        ahead.put(exc)
    else:
        for ready in gather.take():
            ahead.put(ready)
        ahead.put(_END)


def _take(first: object, more: Iterator[object], pending: list[object]) -> bytes | None:
    """One batch: ``first``, then what ``more`` has at once, up to a piece; ``None`` at the end.

    What comes after a full batch (or the end, or an error) waits in ``pending``."""
    parts: list[bytes] = []
    size = 0
    item = first
    while True:
        if item is _END or isinstance(item, Exception):
            if not parts:
                if isinstance(item, Exception):
                    raise item
                return None
            pending.append(item)
            break
        assert isinstance(item, bytes)
        if parts and size + len(item) > PIECE:
            pending.append(item)
            break
        parts.append(item)
        size += len(item)
        nxt = next(more, None)
        if nxt is None:
            break
        item = nxt
    return b"".join(parts)


def _ready(ahead: queue.Queue[object] | asyncio.Queue[object]) -> Iterator[object]:
    """What ``ahead`` holds now, without waiting (a thread's queue or a task's)."""
    while True:
        try:
            yield ahead.get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            return


WAIT = 0.5
"""Seconds an async feeder's worker thread waits for the source at a time, so that a
cancelled feeder does not leave it blocked (which would hold the program's exit)."""

_NOTHING_YET = b""


def _next_batch(ahead: queue.Queue[object], pending: list[object], wait: float | None = None) -> bytes | None:
    """The next batch; with ``wait``, ``_NOTHING_YET`` if nothing came within it."""
    if pending:
        first = pending.pop(0)
    else:
        try:
            first = ahead.get(timeout=wait)
        except queue.Empty:
            return _NOTHING_YET
    return _take(first, _ready(ahead), pending)


def batches(source: StdinSource) -> Iterator[bytes]:
    """``source`` read by a thread of its own, in batches as described above."""
    ahead: queue.Queue[object] = queue.Queue(AHEAD)
    threading.Thread(target=_read_into, args=(source, ahead), name="corral-stdin-reader", daemon=True).start()
    pending: list[object] = []
    while (batch := _next_batch(ahead, pending)) is not None:
        yield batch


async def async_batches(source: AsyncStdinSource) -> AsyncIterator[bytes]:
    """The async twin of :func:`batches`: an async iterable is read by a task, the rest by a thread."""
    pending: list[object] = []
    if not isinstance(source, AsyncIterable):
        ahead: queue.Queue[object] = queue.Queue(AHEAD)
        threading.Thread(target=_read_into, args=(source, ahead), name="corral-stdin-reader", daemon=True).start()
        while (batch := await asyncio.to_thread(_next_batch, ahead, pending, WAIT)) is not None:
            if batch is not _NOTHING_YET:
                yield batch
        return
    queued: asyncio.Queue[object] = asyncio.Queue(AHEAD)

    async def read() -> None:
        gather = _Gather()
        try:
            async for chunk in source:
                for piece in split(chunk):
                    for ready in gather.add(piece, idle=queued.empty()):
                        await queued.put(ready)
        except Exception as exc:
            await queued.put(exc)
        else:
            for ready in gather.take():
                await queued.put(ready)
            await queued.put(_END)

    reader = asyncio.get_running_loop().create_task(read(), name="corral-stdin-reader")
    try:
        while True:
            first = pending.pop(0) if pending else await queued.get()
            batch = _take(first, _ready(queued), pending)
            if batch is None:
                return
            yield batch
    finally:
        reader.cancel()
