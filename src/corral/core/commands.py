"""Running commands in a sandbox: one-shot, streamed, or in the background.

Timeouts are kept here, outside the sandbox: past its deadline a command is
killed with SIGKILL through the agent, whatever it does to its own signals.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.core.agent_client import AgentClient, ProcessEvent
from corral.errors import AgentUnavailable, CorralError, ExecTimeout, InternalError, Interrupted, InvalidRequest

END_GRACE = 1.0
"""Seconds to wait for the rest of a process stream after its end event (it comes at once)."""
PAUSED_RECHECK = 0.1
"""Once a deadline was moved for a pause, how often (at most) it is looked at again while the pause lasts."""
PausedFor = Callable[[], float]
"""Seconds the sandbox has spent paused so far (see ``Lifecycle.paused_for``)."""


class _Deadline:
    """``timeout`` seconds of a command's time, which stops while its sandbox is paused."""

    def __init__(self, timeout: float | None, paused_for: PausedFor | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._paused_for = paused_for or (lambda: 0.0)
        self._base = self._loop.time() - self._paused_for()

    def remaining(self) -> float | None:
        """Seconds left (``None``: no timeout; at most 0 once it has passed)."""
        if not self._timeout:
            return None
        return self._base + self._paused_for() + self._timeout - self._loop.time()


@dataclass(slots=True)
class ExecRequest:
    cmd: str | None = None
    argv: list[str] | None = None
    cwd: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    timeout: float | None = None
    stdin: str | None = None
    stdin_open: bool = False
    """Keep stdin open after ``stdin`` (if any) for later writes."""
    tag: str | None = None

    def command_line(self, shell: list[str]) -> list[str]:
        if (self.cmd is None) == (self.argv is None):
            raise InvalidRequest("give exactly one of 'cmd' (a shell command line) or 'argv' (a list)")
        if self.argv is not None:
            if not self.argv or not self.argv[0]:
                raise InvalidRequest("'argv' must name a program")
            return list(self.argv)
        assert self.cmd is not None
        return [*shell, self.cmd]


@dataclass(slots=True)
class ExecResult:
    pid: int = 0
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    truncated: bool = False
    """Output past the limit was dropped (see :func:`run`)."""


class _Decoders:
    """UTF-8 per stream, incrementally, so a character split across chunks survives."""

    def __init__(self) -> None:
        self._by_kind = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr", "pty")}

    def decode(self, event: ProcessEvent) -> str:
        return self._by_kind[event.kind].decode(event.data)


async def start(
    agent: AgentClient, request: ExecRequest, shell: list[str], *, background: bool
) -> tuple[int, AsyncIterator[ProcessEvent]]:
    """Start the command; return its pid and the rest of its event stream."""
    events = agent.start(
        request.command_line(shell),
        envs=request.envs,
        cwd=request.cwd,
        user=request.user,
        tag=request.tag,
        stdin=background or request.stdin_open or request.stdin is not None,
    ).__aiter__()
    first = await anext(events, None)
    if first is None or first.kind != "start":
        raise InternalError("the agent ended the process stream before the process started")
    if request.stdin is not None:
        await agent.send_stdin(first.pid, request.stdin.encode())
        if not request.stdin_open:
            await agent.close_stdin(first.pid)
    return first.pid, events


async def stream(
    agent: AgentClient,
    pid: int,
    events: AsyncIterator[ProcessEvent],
    timeout: float | None,
    *,
    kill_on_abandon: bool = True,
    paused_for: PausedFor | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """NDJSON-ready events until the process ends; kills it at its deadline.

    The time its sandbox spends paused (``paused_for``) does not count toward
    the deadline: the process was frozen meanwhile. With ``kill_on_abandon``,
    a consumer that stops listening before the end (a client that hung up)
    takes the process down with it: nobody would see its output. Background
    processes pass False and live on. A stream the agent's side broke leaves
    the process be: one cut by a checkpoint of the sandbox ends in
    ``Interrupted`` (the process goes on, ``commands.connect`` follows it again).
    """
    decoders = _Decoders()
    deadline = _Deadline(timeout, paused_for)
    ended = lost = False
    # The next event is read in a task of its own: a deadline that a pause moved must
    # not cancel the read (that would close the stream).
    pending: asyncio.Future[ProcessEvent | None] | None = None
    floor = 0.0
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events, None))
            remaining = deadline.remaining()
            done, _ = await asyncio.wait({pending}, timeout=None if remaining is None else max(remaining, floor))
            if not done:
                if (remaining := deadline.remaining()) is not None and remaining > 0:
                    floor = PAUSED_RECHECK  # the sandbox was paused meanwhile: that time does not count
                    continue
                ended = True
                await _kill(agent, pid)
                yield {"type": "end", "exit_code": -9, "error": "timeout"}
                return
            event, pending = pending.result(), None
            if event is None:
                raise AgentUnavailable("the process stream ended without an end event")
            if event.kind == "end":
                ended = True
                await _read_to_end(events)
                yield {"type": "end", "exit_code": event.exit_code, "error": event.error}
                return
            if event.kind in ("stdout", "stderr", "pty"):
                yield {"type": event.kind, "data": decoders.decode(event)}
    except Interrupted:
        lost = True  # by a checkpoint: the process goes on, and can be followed again
        raise Interrupted(
            f"the command's output stream was cut: its sandbox was checkpointed (a snapshot, fork or hibernate) "
            f"while it ran; it goes on: follow it with commands.connect({pid})",
            details={"pid": pid},
        ) from None
    except AgentUnavailable:
        lost = True  # nobody to tell to kill it
        raise
    finally:
        if pending is not None:  # cancelled, or ended as this ended: retrieve its outcome either way
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if not ended and not lost and kill_on_abandon:
            await asyncio.shield(_kill(agent, pid))
        closer = getattr(events, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def run(
    agent: AgentClient,
    request: ExecRequest,
    shell: list[str],
    *,
    output_limit: int | None = None,
    paused_for: PausedFor | None = None,
) -> ExecResult:
    """Run to the end and collect the output; past the timeout raise ExecTimeout.

    Each stream keeps at most ``output_limit`` characters (``None``: all): a
    command that prints gigabytes must not take the server's memory with it.
    It runs on to its end; the rest of its output is read and dropped.
    """
    pid, events = await start(agent, request, shell, background=False)
    result = ExecResult(pid=pid)
    out: dict[str, list[str]] = {"stdout": [], "stderr": [], "pty": []}
    kept = {"stdout": 0, "stderr": 0}
    async for item in stream(agent, pid, events, request.timeout, paused_for=paused_for):
        if item["type"] == "end":
            result.exit_code, result.error = item["exit_code"], item["error"]
            continue
        kind, data = item["type"], item["data"]
        counted = "stderr" if kind == "stderr" else "stdout"  # a terminal's output is its stdout
        if output_limit is not None and kept[counted] + len(data) > output_limit:
            data, result.truncated = data[: output_limit - kept[counted]], True
        kept[counted] += len(data)
        if data:
            out[kind].append(data)
    result.stdout = "".join(out["stdout"] + out["pty"])
    result.stderr = "".join(out["stderr"])
    if result.error == "timeout":
        raise ExecTimeout(
            f"the command ran past its timeout of {request.timeout:g}s and was killed",
            details={"pid": pid, "stdout": result.stdout, "stderr": result.stderr},
        )
    return result


async def _read_to_end(events: AsyncIterator[ProcessEvent]) -> None:
    """Read what follows the end event (the stream's end, sent with it), so the agent's connection is reused."""
    with contextlib.suppress(CorralError, TimeoutError):
        async with asyncio.timeout(END_GRACE):
            async for _ in events:
                pass


async def _kill(agent: AgentClient, pid: int) -> None:
    with contextlib.suppress(CorralError):
        await agent.signal(pid, "SIGKILL")
