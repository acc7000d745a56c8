"""A sandbox's console is read from its end: it may be as large as the sandbox's disk."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from corral.runtimes import consoles
from corral.runtimes.consoles import console_path, read_console, trim_console, trim_consoles


def test_a_small_console_is_read_whole(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("one\ntwo\n")
    assert read_console(console) == "one\ntwo\n"


def test_a_large_one_is_its_end_from_a_whole_line_and_says_what_was_left_out(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    lines = [f"line {i:05d}\n" for i in range(10_000)]  # 11 bytes each
    console.write_text("".join(lines))
    text = read_console(console, limit=1000)
    first, *rest = text.splitlines(keepends=True)
    assert rest == lines[-len(rest) :] and 85 <= len(rest) <= 91
    assert first == f"[{110_000 - 11 * len(rest)} bytes of earlier console left out]\n"


def test_it_is_on_the_sandboxs_disk_and_where_it_was_for_sandboxes_made_before(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    (new / "disk").mkdir(parents=True)
    (old / "disk").mkdir(parents=True)
    (old / "console.log").write_text("made before\n")
    assert console_path(new) == new / "disk" / "console.log"
    assert console_path(old) == old / "console.log"


def test_one_past_its_limit_is_cut_to_its_end_and_says_so(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    lines = [f"line {i:05d} {'.' * 48}\n".encode() for i in range(10_000)]  # 60 bytes each, 600,000 in all
    console.write_bytes(b"".join(lines))
    assert trim_console(console, at=700_000, keep=1000) == 0  # under its limit: untouched
    assert console.stat().st_size == 600_000
    removed = trim_console(console, at=500_000, keep=1000)
    first, *rest = console.read_bytes().splitlines(keepends=True)
    assert rest == lines[-len(rest) :] and 1000 <= console.stat().st_size <= 1000 + 17 * 4096
    assert first.startswith(f"[{removed} bytes of console trimmed]".encode()) and first.endswith(b"\n")
    assert len(first) < 60 and removed + console.stat().st_size == 600_000
    with console.open("ab") as appender:  # as the runtime writes: appended after the cut
        appender.write(b"after\n")
    assert console.read_bytes().endswith(lines[-1] + b"after\n")


def test_no_line_written_during_a_cut_is_lost(tmp_path: Path) -> None:
    """The runtime appends all the while; the cut is made in place, where the kernel orders it with appends."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x" * 3 * 4096)
    with probe.open("r+b") as f:
        if not consoles._collapse(f.fileno(), 4096):
            pytest.skip(f"{tmp_path}'s file system cannot collapse ranges (corral then copies, and may lose a line)")
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    writing = True

    def write() -> None:
        with console.open("ab", buffering=0) as appender:
            n = 0
            while writing:
                appender.write(f"{n:08d} {'-' * 50}\n".encode())
                n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 1.0
        cuts = 0
        while time.monotonic() < deadline:
            cuts += bool(trim_console(console, at=64 << 10, keep=16 << 10))
    finally:
        writing = False
        writer.join()
    numbers = [int(line.split()[0]) for line in console.read_bytes().splitlines()[1:]]
    assert cuts > 5 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))


@pytest.mark.anyio
async def test_every_sandboxs_console_is_looked_at_again_and_again(tmp_path: Path) -> None:
    sandboxes = tmp_path / "sandboxes"
    ondisk, legacy, small = (
        sandboxes / "sbone/disk/console.log",
        sandboxes / "sbtwo/console.log",
        sandboxes / "sbthree/disk/console.log",
    )
    for path in (ondisk, legacy, small):
        path.parent.mkdir(parents=True)
    ondisk.write_bytes(b"x\n" * 50_000)
    legacy.write_bytes(b"y\n" * 50_000)
    small.write_bytes(b"z\n" * 10)
    trimming = asyncio.create_task(trim_consoles(sandboxes, every=0.01, at=10_000, keep=100))
    await asyncio.sleep(0.3)
    trimming.cancel()
    assert ondisk.stat().st_size < 100 + 4096 and legacy.stat().st_size < 100 + 4096  # whole blocks go
    assert small.read_bytes() == b"z\n" * 10
