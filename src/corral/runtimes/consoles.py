"""A sandbox's console: its agent's stdout and stderr, and the runtime's own messages.

The runtime (``runsc run`` or ``restore``) is handed the file as its stdio,
and gVisor hands it on to the sandbox's init, the agent. So root in a sandbox
can write to it (``/proc/1/fd/1``): the file is on the sandbox's own disk
(:func:`console_path`), where that counts against the disk's size like any
other file it writes. What the server reads of it is its end
(:func:`read_console`), and :func:`trim_consoles` keeps a long-lived
sandbox's console from growing for ever: past ``TRIM_AT`` bytes only its
last ``KEEP`` remain.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from corral.runtimes.disks import DISK

log = logging.getLogger(__name__)

CONSOLE = "console.log"
CARRIED = 200
"""Lines of a checkpointed sandbox's console that its restored copies' consoles begin with."""
READ_LIMIT = 4 << 20
"""Most of a console read at once (its end): it may be as large as the sandbox's disk."""
TRIM_AT, KEEP = 16 << 20, 1 << 20
"""A console past ``TRIM_AT`` bytes is cut to its last ``KEEP`` (whole lines)."""
TRIM_EVERY = 60.0
"""Seconds between two looks at every console."""
FALLOC_FL_COLLAPSE_RANGE = 0x08


def console_path(sdir: Path) -> Path:
    """The console of the sandbox whose dir is ``sdir``: on its disk (beside it for sandboxes made before)."""
    legacy = sdir / CONSOLE
    return legacy if legacy.exists() else sdir / DISK / CONSOLE


def read_console(path: Path, *, limit: int = READ_LIMIT) -> str:
    """A console's text: its last ``limit`` bytes at most, after a line saying how much came before."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        data = f.read(limit)
    if size <= limit:
        return data.decode(errors="replace")
    data = data[data.find(b"\n") + 1 :]  # from the first whole line
    return f"[{size - len(data)} bytes of earlier console left out]\n" + data.decode(errors="replace")


def save_console_end(sdir: Path, dest: Path) -> None:
    """The end of a sandbox's console into a snapshot being taken of it (``dest``), for its copies."""
    try:
        lines = read_console(console_path(sdir)).splitlines(keepends=True)
    except FileNotFoundError:
        return
    (dest / CONSOLE).write_text("".join(lines[-CARRIED:]))


def carry_console(snapshot: Path, sdir: Path) -> None:
    """Start a restored sandbox's console with what its processes said before they were saved, and a line saying so."""
    try:
        lines = read_console(snapshot / CONSOLE).splitlines(keepends=True)[-CARRIED:]
    except FileNotFoundError:
        lines = []
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with console_path(sdir).open("a") as console:
        console.writelines(lines)
        console.write(f"{now} corral: restored from the checkpoint in {snapshot}\n")


def trim_console(path: Path, *, at: int = TRIM_AT, keep: int = KEEP) -> int:
    """Cut a console past ``at`` bytes to its last ``keep`` or a little more, after a line saying so.

    Answers the bytes removed. The runtime appends to the file (``O_APPEND``) all the
    while: the start is collapsed away in place (``fallocate``'s ``COLLAPSE_RANGE``,
    which the kernel orders with appends), in whole file-system blocks, and the
    piece of a line the cut leaves first is overwritten with the note. Where the
    file system cannot collapse, the end is copied to the start instead, and a line
    written during that copy may be lost.
    """
    with path.open("r+b") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        if size <= at:
            return 0
        cut = _cut_with_room(fd, size - keep)
        if cut and _collapse(fd, cut):
            piece = os.pread(fd, NOTE_ROOM * 4, 0).find(b"\n")
            if piece > 0:
                os.pwrite(fd, _note(cut)[:piece].ljust(piece), 0)
            return cut
        f.seek(size - keep)
        end = f.read(keep)
        end = end[end.find(b"\n") + 1 :]
        f.seek(0)
        f.write(_note(size - len(end)) + b"\n" + end)
        f.truncate()
    return size - len(end)


NOTE_ROOM = 48
"""Bytes the piece of a line a cut leaves first should have, for the note to fit."""


def _note(removed: int) -> bytes:
    return f"[{removed} bytes of console trimmed]".encode()


def _cut_with_room(fd: int, most: int) -> int:
    """A whole number of blocks, at most ``most`` bytes, to cut: one after which the note fits, if one is near."""
    block = os.fstat(fd).st_blksize or 4096
    first = most // block * block
    for cut in range(first, max(0, first - 16 * block), -block):
        if os.pread(fd, NOTE_ROOM * 4, cut).find(b"\n") >= NOTE_ROOM:
            return cut
    return first


def _collapse(fd: int, length: int) -> bool:
    """Remove the first ``length`` bytes of the file in place; False where the file system cannot."""
    try:
        import ctypes

        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return int(fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, length)) == 0


def _consoles(sandboxes: Path) -> list[Path]:
    return [*sandboxes.glob(f"*/{DISK}/{CONSOLE}"), *sandboxes.glob(f"*/{CONSOLE}")]


async def trim_consoles(sandboxes: Path, *, every: float = TRIM_EVERY, at: int = TRIM_AT, keep: int = KEEP) -> None:
    """Every ``every`` seconds, :func:`trim_console` each sandbox's console under ``sandboxes``, until cancelled."""
    while True:
        await asyncio.sleep(every)
        for path in await asyncio.to_thread(_consoles, sandboxes):
            try:
                removed = await asyncio.to_thread(trim_console, path, at=at, keep=keep)
            except OSError:
                continue  # its sandbox went meanwhile
            if removed:
                log.info("sandbox %s: trimmed %d bytes of its console", path.relative_to(sandboxes).parts[0], removed)
