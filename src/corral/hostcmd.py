"""Running host commands (``ip``, ``mount``, ``runsc``...) from async code."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from corral.errors import RuntimeFailure

log = logging.getLogger(__name__)

LOW_PRIORITY = 19
"""The nice value of commands run :func:`in_the_background`: any other process on the host comes first."""
_low_priority: contextvars.ContextVar[bool] = contextvars.ContextVar("corral_hostcmd_low_priority", default=False)


@contextlib.contextmanager
def in_the_background() -> Iterator[None]:
    """Commands run inside (and in tasks started inside) yield the CPU to every other process.

    For work done ahead of need (spare disks and links): on a busy host it must
    not slow the sandboxes being made beside it. Each command is niced right
    after it is spawned, which costs no ``nice`` process on its way. A
    :class:`~corral.batching.Batcher`'s batches are not: they may hold a
    create's job beside the background one.
    """
    token = _low_priority.set(True)
    try:
        yield
    finally:
        _low_priority.reset(token)


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Completed:
    """Run ``argv`` to completion; with ``check``, a non-zero exit raises RuntimeFailure."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    if _low_priority.get():
        with contextlib.suppress(OSError):  # it may have ended already
            os.setpriority(os.PRIO_PROCESS, proc.pid, LOW_PRIORITY)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeFailure(f"{argv[0]} did not finish within {timeout:g}s", details={"argv": list(argv)}) from None
    except asyncio.CancelledError:
        # Whoever cancelled may be about to undo what this command does: it must not go on.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    done = Completed(
        tuple(argv),
        proc.returncode or 0,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeFailure(
            f"{' '.join(argv[:3])} failed: {message[-1] if message else f'exit {done.returncode}'}",
            details={
                "argv": list(argv),
                "exit_code": done.returncode,
                "stderr": done.stderr[-2000:],
            },
        )
    log.debug("ran %s -> %s in %.1f ms", argv, done.returncode, (time.monotonic() - started) * 1e3)
    return done


def kill_processes_naming(text: str, *, wait: float = 2.0) -> list[int]:
    """SIGKILL every process whose command line contains ``text``; answers their pids.

    For host commands a crashed server left running (a ``runsc checkpoint``, a
    ``cp`` of a sandbox's disk): they are no children of the server that finds
    them, so only their command lines tell whose they are. Blocks until they
    are gone (at most ``wait`` seconds).
    """
    needle = text.encode()
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if needle not in f.read().replace(b"\0", b" "):
                    continue
            os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
        log.warning("killed a leftover process %s naming %s", entry.name, text)
        killed.append(int(entry.name))
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline and any(alive(pid) for pid in killed):
        time.sleep(0.01)
    return killed


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has: only its parent's wait is left)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
