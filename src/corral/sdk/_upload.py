"""What ``files.write`` accepts, turned into a streamed request body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import IO, Any

from corral.errors import InvalidRequest

CHUNK_SIZE = 1024 * 1024
"""Bytes read from a file object at a time while uploading it."""

WriteData = str | bytes | bytearray | memoryview | IO[bytes] | IO[str] | Iterable[bytes]
"""A whole body (text or bytes), a file object, or an iterable of byte chunks."""

AsyncWriteData = WriteData | AsyncIterable[bytes]


def _as_bytes(piece: Any) -> bytes:
    if isinstance(piece, str):
        return piece.encode()
    if isinstance(piece, bytes | bytearray | memoryview):
        return bytes(piece)
    raise InvalidRequest(f"cannot upload a {type(piece).__name__}: give str, bytes or a file")


def _whole(data: object) -> bytes | None:
    return _as_bytes(data) if isinstance(data, str | bytes | bytearray | memoryview) else None


def _read_file(reader: IO[Any]) -> Iterator[bytes]:
    while piece := reader.read(CHUNK_SIZE):
        yield _as_bytes(piece)


def _iterate(pieces: Iterable[Any]) -> Iterator[bytes]:
    for piece in pieces:
        yield _as_bytes(piece)


def sync_body(data: WriteData) -> bytes | Iterator[bytes]:
    """The body for a blocking upload: bytes, or chunks read as they are sent."""
    whole = _whole(data)
    if whole is not None:
        return whole
    if hasattr(data, "read"):
        return _read_file(data)  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        return _iterate(data)
    raise InvalidRequest(f"cannot upload a {type(data).__name__}: give str, bytes or a file")


async def _aread_file(reader: IO[Any]) -> AsyncIterator[bytes]:
    while piece := await asyncio.to_thread(reader.read, CHUNK_SIZE):
        yield _as_bytes(piece)


async def _aiterate(pieces: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[bytes]:
    if isinstance(pieces, AsyncIterable):
        async for piece in pieces:
            yield _as_bytes(piece)
    else:
        for piece in pieces:
            yield _as_bytes(piece)


def async_body(data: AsyncWriteData) -> bytes | AsyncIterator[bytes]:
    """The body for an async upload; a file object is read in a worker thread."""
    whole = _whole(data)
    if whole is not None:
        return whole
    if hasattr(data, "read"):
        return _aread_file(data)  # type: ignore[arg-type]
    if isinstance(data, AsyncIterable | Iterable):
        return _aiterate(data)
    raise InvalidRequest(f"cannot upload a {type(data).__name__}: give str, bytes or a file")
