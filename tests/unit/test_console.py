"""A sandbox's console is read from its end: it may be as large as the sandbox's disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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
    lines = [f"line {i:05d}\n".encode() for i in range(10_000)]  # 11 bytes each, 110,000 in all
    console.write_bytes(b"".join(lines))
    assert trim_console(console, at=200_000, keep=1000) == 0  # under its limit: untouched
    assert console.stat().st_size == 110_000
    removed = trim_console(console, at=100_000, keep=1000)
    first, *rest = console.read_bytes().splitlines(keepends=True)
    assert rest == lines[-len(rest) :] and 85 <= len(rest) <= 91
    assert removed == 110_000 - 11 * len(rest) and first == f"[{removed} bytes of console trimmed]\n".encode()
    with console.open("ab") as appender:  # as the runtime writes: appended after the cut
        appender.write(b"after\n")
    assert console.read_bytes().endswith(lines[-1] + b"after\n")


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
    assert ondisk.stat().st_size < 200 and legacy.stat().st_size < 200
    assert small.read_bytes() == b"z\n" * 10
