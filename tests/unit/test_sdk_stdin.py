"""How a command's stdin source is cut into writes: everything, in order, in batches of at most a piece."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from corral.errors import Conflict, DiskFull, Interrupted, InvalidRequest, ProcessNotFound, SandboxNotRunning
from corral.sdk._stdin import PIECE, async_batches, batches, reader_gone


def test_small_chunks_go_in_few_batches_and_nothing_is_lost() -> None:
    lines = [f"line {i}\n" for i in range(200_000)]
    sent = list(batches(iter(lines)))
    assert b"".join(sent) == "".join(lines).encode()
    assert all(len(batch) <= PIECE for batch in sent)
    assert len(sent) < 200  # one write per line would be 200,000


@pytest.mark.parametrize("whole", [os.urandom(3 * PIECE + 5), "é" * PIECE], ids=["bytes", "text"])
def test_a_whole_body_is_cut_into_pieces(whole: bytes | str) -> None:
    sent = list(batches(whole))
    expected = whole.encode() if isinstance(whole, str) else whole
    assert b"".join(sent) == expected and all(len(batch) <= PIECE for batch in sent)


def test_a_pipe_is_written_as_it_comes_not_when_it_ends() -> None:
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")  # noqa: SIM115 (closed below)
    try:
        os.write(write_end, b"first\n")
        written = batches(reader)
        assert next(written) == b"first\n"  # the pipe is still open: a whole read would block here
        os.write(write_end, b"second\n")
        os.close(write_end)
        assert list(written) == [b"second\n"]
    finally:
        reader.close()


def test_a_source_that_fails_fails_the_writes_after_what_came_before() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"some"
        raise OSError("the disk went away")

    got: list[bytes] = []
    with pytest.raises(OSError, match="the disk went away"):
        for batch in batches(chunks()):
            got.append(batch)
    assert got in ([b"some"], [])  # what was read before, if the writer got to it first


def test_what_is_no_text_or_bytes_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="cannot write a int to stdin"):
        list(batches([1, 2]))  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="cannot write a float to stdin"):
        list(batches(1.5))  # type: ignore[arg-type]


def test_async_batches_of_async_and_plain_sources() -> None:
    async def chunks() -> AsyncIterator[str]:
        for i in range(50_000):
            yield f"{i}\n"

    async def collect(source: object) -> list[bytes]:
        return [batch async for batch in async_batches(source)]  # type: ignore[arg-type]

    sent = asyncio.run(collect(chunks()))
    assert b"".join(sent) == "".join(f"{i}\n" for i in range(50_000)).encode() and len(sent) < 100
    assert b"".join(asyncio.run(collect(io.BytesIO(b"x" * (2 * PIECE))))) == b"x" * (2 * PIECE)


def test_a_cancelled_async_writer_leaves_no_thread_waiting_on_the_source() -> None:
    read_end, write_end = os.pipe()
    reader = open(read_end, "rb")  # noqa: SIM115 (closed below)

    async def feed_then_cancel() -> None:
        task = asyncio.ensure_future(anext(async_batches(reader)))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    before = threading.active_count()
    try:
        asyncio.run(feed_then_cancel())  # asyncio.run waits for its worker threads: it returns
    finally:
        os.close(write_end)
        reader.close()
    assert threading.active_count() <= before + 1  # at most the reader thread, which ends at the pipe's end


def test_only_a_reader_that_went_stops_the_writes_quietly() -> None:
    assert reader_gone(ProcessNotFound("no process 12"))  # it ended
    assert reader_gone(Conflict("stdin of process 12 is closed"))  # or closed its stdin (a broken pipe too)
    # A write a checkpoint cut may have landed or not, and a sandbox gone is news: the feeder's error,
    # after it closes stdin (else the command would wait for the rest for ever).
    assert not reader_gone(Interrupted("the call was cut"))
    assert not reader_gone(SandboxNotRunning("sandbox sbx is dead"))
    assert not reader_gone(DiskFull("no room"))
