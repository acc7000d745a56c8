"""Running commands in a sandbox: ``sbx.commands`` and background handles (async).

The twin of :mod:`corral.sdk.commands`; output handlers may be coroutines.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Literal, overload

import httpx

from corral.errors import ProcessNotFound
from corral.sdk import _routes as routes
from corral.sdk._http import AsyncHTTP, Call
from corral.sdk._output import (
    HandleBase,
    OutputCollector,
    OutputHandler,
    check_exit,
    handler_for,
    pid_of,
    start_pid,
)
from corral.sdk._stdin import AsyncStdinSource, async_batches, reader_gone, writes
from corral.sdk.models import CommandResult, OutputChunk, ProcessInfo

__all__ = ["AsyncCommandHandle", "AsyncCommands"]


async def _pump(
    lines: AsyncIterable[str],
    output: OutputCollector,
    on_stdout: OutputHandler | None,
    on_stderr: OutputHandler | None,
) -> AsyncGenerator[None, None]:
    """Feed ``lines`` to ``output``, calling (and awaiting) the handlers; yields after each line."""
    async for line in lines:
        chunk = output.feed(line)
        handler = handler_for(chunk, on_stdout, on_stderr) if chunk else None
        if chunk and handler:
            result = handler(chunk.data)
            if inspect.isawaitable(result):
                await result
        yield
        if output.ended:
            return


class _Feeder:
    """The async twin of :class:`corral.sdk.commands._Feeder`: a task."""

    def __init__(self, http: AsyncHTTP, sandbox_id: str, pid: int, source: AsyncStdinSource) -> None:
        self._http, self._sandbox_id, self._pid, self._source = http, sandbox_id, pid, source
        self.error: Exception | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"corral-stdin-{pid}")

    async def _run(self) -> None:
        try:
            async for piece in async_batches(self._source):
                await self._http.call(routes.send_stdin(self._sandbox_id, self._pid, piece))
            await self._http.call(routes.close_stdin(self._sandbox_id, self._pid))
        except Exception as exc:
            if reader_gone(exc):
                return
            self.error = exc
            with contextlib.suppress(Exception):  # so that the command does not wait for the rest for ever
                await self._http.call(routes.close_stdin(self._sandbox_id, self._pid))


class AsyncCommandHandle(HandleBase):
    """A command running in the background (async).

    A task follows its output from the moment the handle is made; ``stdout``
    and ``stderr`` grow as it arrives. ``async for chunk in handle`` yields
    each :class:`OutputChunk` in order.
    """

    def __init__(
        self,
        http: AsyncHTTP,
        sandbox_id: str,
        pid: int,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        opened: tuple[httpx.Response, AsyncIterator[str]] | None = None,
    ) -> None:
        super().__init__(sandbox_id, pid, on_stdout, on_stderr)
        self._http = http
        self._opened = opened
        self._changed = asyncio.Event()
        self._feeder: _Feeder | None = None
        """Writing its stdin, when it was started with a stdin to read from."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=f"corral-pid-{pid}")

    async def _follow(self) -> None:
        try:
            if self._opened is None:
                response = await self._http.open(routes.process_stream(self.sandbox_id, self.pid))
                lines = response.aiter_lines()
            else:
                response, lines = self._opened
            async with self._http.stream_of(response):
                pump = _pump(lines, self._output, self._on_stdout, self._on_stderr)
                async with aclosing(pump):
                    async for _ in pump:
                        self._notify()
        except Exception as exc:
            self._failure = exc
        finally:
            self._done = True
            self._notify()

    def _notify(self) -> None:
        # Wake everyone waiting on the current event; later waiters get a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        seen = 0
        while True:
            changed, done = self._changed, self._done
            if not done and len(self._output.chunks) == seen:
                await changed.wait()
                continue
            new = self._output.chunks[seen:]
            seen += len(new)
            for chunk in new:
                yield chunk
            if done and seen == len(self._output.chunks):
                return

    async def wait(self) -> CommandResult:
        """Wait for it to end; its result, or :class:`CommandExitError` if it exited non-zero."""
        await asyncio.wait({self._task})
        result = self._verdict()
        if self._feeder is not None and self._feeder.error is not None:
            raise self._feeder.error
        return result

    async def disconnect(self) -> None:
        """Stop following its output and close its connection; the process keeps running."""
        self._disconnected = True
        self._task.cancel()
        await asyncio.wait({self._task})

    async def send_stdin(self, data: str | bytes) -> None:
        """Write text or bytes to its stdin."""
        await AsyncCommands(self._http, self.sandbox_id).send_stdin(self.pid, data)

    async def close_stdin(self) -> None:
        await self._http.call(routes.close_stdin(self.sandbox_id, self.pid))

    async def signal(self, signal: str | int) -> None:
        """Send it a signal: ``"SIGTERM"``, ``"SIGINT"``, ... or a number."""
        await self._http.call(routes.signal(self.sandbox_id, self.pid, signal))

    async def kill(self) -> bool:
        """SIGKILL it; ``False`` if it had already gone."""
        return await AsyncCommands(self._http, self.sandbox_id).kill(self.pid)


class AsyncCommands:
    """``sbx.commands``: run commands in the sandbox and manage background ones (async)."""

    def __init__(self, http: AsyncHTTP, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = 60,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: AsyncStdinSource | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = 60,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: AsyncStdinSource | None = None,
        tag: str | None = None,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = 60,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: AsyncStdinSource | None = None,
        tag: str | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Run ``cmd``; see :meth:`corral.sdk.commands.Commands.run` (``stdin`` may also be an async iterable)."""
        text = stdin if isinstance(stdin, str) else None
        source = stdin if stdin is not None and not isinstance(stdin, str) else None
        body = routes.exec_body(
            cmd, timeout=timeout, envs=envs, cwd=cwd, user=user, stdin=text, tag=tag, stdin_open=source is not None
        )
        if background:
            handle = await self._attach(routes.exec_background(self._sandbox_id, body), on_stdout, on_stderr)
            if source is not None:
                handle._feeder = _Feeder(self._http, self._sandbox_id, handle.pid, source)
            return handle
        if on_stdout is None and on_stderr is None and source is None:
            return check_exit(await self._http.call(routes.exec_plain(self._sandbox_id, body)))
        output = OutputCollector()
        feeder: _Feeder | None = None
        try:
            async with self._http.stream(routes.exec_stream(self._sandbox_id, body)) as response:
                async for _ in _pump(response.aiter_lines(), output, on_stdout, on_stderr):
                    if source is not None and feeder is None and output.pid:
                        feeder = _Feeder(self._http, self._sandbox_id, output.pid, source)
        finally:
            if feeder is not None and not feeder.task.done():  # the command ended first: the rest is not wanted
                feeder.task.cancel()
                await asyncio.wait({feeder.task})
        result = output.result()
        if feeder is not None and feeder.error is not None:
            raise feeder.error
        return result

    exec = run

    async def connect(
        self,
        pid: int | str,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> AsyncCommandHandle:
        """Follow a background process (by pid or tag): all its output from when this returns, then its end."""
        pid = pid_of(await self.list(), pid)
        return await self._attach(routes.process_stream(self._sandbox_id, pid), on_stdout, on_stderr)

    async def _attach(
        self, call: Call[httpx.Response], on_stdout: OutputHandler | None, on_stderr: OutputHandler | None
    ) -> AsyncCommandHandle:
        """A handle on the output stream ``call`` opens, once its start event came (the agent follows it by then)."""
        response = await self._http.open(call)
        lines = response.aiter_lines()
        try:
            pid = start_pid(await anext(lines, ""))
        except BaseException:
            await response.aclose()
            raise
        return AsyncCommandHandle(
            self._http, self._sandbox_id, pid, on_stdout=on_stdout, on_stderr=on_stderr, opened=(response, lines)
        )

    async def list(self) -> builtins.list[ProcessInfo]:
        """The background processes running in the sandbox."""
        return await self._http.call(routes.list_processes(self._sandbox_id))

    async def kill(self, pid: int | str) -> bool:
        """SIGKILL a process (by pid or tag); ``False`` if there was none."""
        try:
            await self._http.call(routes.signal(self._sandbox_id, pid, "SIGKILL"))
        except ProcessNotFound:
            return False
        return True

    async def send_stdin(self, pid: int | str, data: str | bytes) -> None:
        """Write text or bytes to a process's stdin (by pid or tag)."""
        for piece in writes(data):
            await self._http.call(routes.send_stdin(self._sandbox_id, pid, piece))

    async def close_stdin(self, pid: int | str) -> None:
        await self._http.call(routes.close_stdin(self._sandbox_id, pid))
