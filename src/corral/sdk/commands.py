"""Running commands in a sandbox: ``sbx.commands`` and background handles (sync)."""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, overload

import httpx

from corral.errors import ProcessNotFound
from corral.sdk import _routes as routes
from corral.sdk._http import Call, SyncHTTP
from corral.sdk._output import (
    HandleBase,
    OutputCollector,
    OutputHandler,
    check_exit,
    handler_for,
    pid_of,
    start_pid,
)
from corral.sdk._stdin import StdinSource, batches, reader_gone, writes
from corral.sdk.models import CommandResult, OutputChunk, ProcessInfo

__all__ = ["CommandHandle", "Commands"]


def _pump(
    lines: Iterable[str],
    output: OutputCollector,
    on_stdout: OutputHandler | None,
    on_stderr: OutputHandler | None,
) -> Iterator[None]:
    """Feed ``lines`` to ``output``, calling the handlers; yields after each line."""
    for line in lines:
        chunk = output.feed(line)
        handler = handler_for(chunk, on_stdout, on_stderr) if chunk else None
        if chunk and handler:
            handler(chunk.data)
        yield
        if output.ended:
            return


class _Feeder(threading.Thread):
    """Writes a stdin source to a started process as it is read, then closes its stdin.

    Should the process end or close its stdin first, the rest is dropped, as a
    pipe's writer stops once its reader has gone. Another failure lands in ``error``.
    """

    def __init__(self, http: SyncHTTP, sandbox_id: str, pid: int, source: StdinSource) -> None:
        super().__init__(name=f"corral-stdin-{pid}", daemon=True)
        self._http, self._sandbox_id, self._pid, self._source = http, sandbox_id, pid, source
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            for piece in batches(self._source):
                self._http.call(routes.send_stdin(self._sandbox_id, self._pid, piece))
            self._http.call(routes.close_stdin(self._sandbox_id, self._pid))
        except Exception as exc:
            if reader_gone(exc):
                return
            self.error = exc
            with contextlib.suppress(Exception):  # so that the command does not wait for the rest for ever
                self._http.call(routes.close_stdin(self._sandbox_id, self._pid))


class CommandHandle(HandleBase):
    """A command running in the background.

    A thread follows its output from the moment the handle is made; ``stdout``
    and ``stderr`` grow as it arrives, and the handlers are called from that
    thread. Iterating the handle yields each :class:`OutputChunk` in order.
    """

    def __init__(
        self,
        http: SyncHTTP,
        sandbox_id: str,
        pid: int,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        opened: tuple[httpx.Response, Iterator[str]] | None = None,
    ) -> None:
        super().__init__(sandbox_id, pid, on_stdout, on_stderr)
        self._http = http
        self._opened = opened
        self._changed = threading.Condition()
        self._response: httpx.Response | None = None
        self._feeder: _Feeder | None = None
        """Writing its stdin, when it was started with a stdin to read from."""
        self._thread = threading.Thread(target=self._follow, name=f"corral-pid-{pid}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            if self._opened is None:
                response = self._http.open(routes.process_stream(self.sandbox_id, self.pid))
                lines = response.iter_lines()
            else:
                response, lines = self._opened
            self._response = response
            with self._http.stream_of(response):
                if self._disconnected:  # before the response was known to disconnect()
                    return
                pump = _pump(lines, self._output, self._on_stdout, self._on_stderr)
                for _ in pump:
                    self._notify()
                    if self._disconnected:
                        break
        except Exception as exc:
            if not self._disconnected:  # its hang-up ends the read with an error
                self._failure = exc
        finally:
            self._done = True
            self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def __iter__(self) -> Iterator[OutputChunk]:
        seen = 0
        while True:
            with self._changed:
                while not self._done and len(self._output.chunks) == seen:
                    self._changed.wait()
                done = self._done
            new = self._output.chunks[seen:]
            seen += len(new)
            yield from new
            if done and seen == len(self._output.chunks):
                return

    def wait(self) -> CommandResult:
        """Wait for it to end; its result, or :class:`CommandExitError` if it exited non-zero."""
        self._thread.join()
        result = self._verdict()
        if self._feeder is not None and self._feeder.error is not None:
            raise self._feeder.error
        return result

    def disconnect(self) -> None:
        """Stop following its output and close its connection; the process keeps running."""
        self._disconnected = True
        if self._response is not None:
            self._http.hang_up(self._response)
        if threading.current_thread() is not self._thread:  # not from an output handler
            self._thread.join()

    def send_stdin(self, data: str | bytes) -> None:
        """Write text or bytes to its stdin."""
        Commands(self._http, self.sandbox_id).send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        self._http.call(routes.close_stdin(self.sandbox_id, self.pid))

    def signal(self, signal: str | int) -> None:
        """Send it a signal: ``"SIGTERM"``, ``"SIGINT"``, ... or a number."""
        self._http.call(routes.signal(self.sandbox_id, self.pid, signal))

    def kill(self) -> bool:
        """SIGKILL it; ``False`` if it had already gone."""
        return Commands(self._http, self.sandbox_id).kill(self.pid)


class Commands:
    """``sbx.commands``: run commands in the sandbox and manage background ones."""

    def __init__(self, http: SyncHTTP, sandbox_id: str) -> None:
        self._http = http
        self._sandbox_id = sandbox_id

    @overload
    def run(
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
        stdin: StdinSource | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    def run(
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
        stdin: StdinSource | None = None,
        tag: str | None = None,
    ) -> CommandHandle: ...

    def run(
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
        stdin: StdinSource | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd``: a shell line (``str``) or an argv list.

        Waits for it and answers its :class:`CommandResult`, raising
        :class:`CommandExitError` on a non-zero exit and ``ExecTimeout`` past
        ``timeout`` seconds (``None``: no limit). With ``on_stdout``/``on_stderr``
        the output is streamed to them as it arrives. With ``background=True``
        it answers a :class:`CommandHandle` at once.

        ``stdin``: text, sent with the request; or bytes, a file object, or an
        iterable of chunks, written to the command as they are read (of any
        size: a file's or a program's output), after which its stdin is closed.
        """
        text = stdin if isinstance(stdin, str) else None
        source = stdin if stdin is not None and not isinstance(stdin, str) else None
        body = routes.exec_body(
            cmd, timeout=timeout, envs=envs, cwd=cwd, user=user, stdin=text, tag=tag, stdin_open=source is not None
        )
        if background:
            handle = self._attach(routes.exec_background(self._sandbox_id, body), on_stdout, on_stderr)
            if source is not None:
                handle._feeder = _Feeder(self._http, self._sandbox_id, handle.pid, source)
            return handle
        if on_stdout is None and on_stderr is None and source is None:
            return check_exit(self._http.call(routes.exec_plain(self._sandbox_id, body)))
        output = OutputCollector()
        feeder: _Feeder | None = None
        with self._http.stream(routes.exec_stream(self._sandbox_id, body)) as response:
            for _ in _pump(response.iter_lines(), output, on_stdout, on_stderr):
                if source is not None and feeder is None and output.pid:
                    feeder = _Feeder(self._http, self._sandbox_id, output.pid, source)
        result = output.result()
        if feeder is not None and feeder.error is not None:  # it ended all the same; a feeder left reading is let be
            raise feeder.error
        return result

    exec = run

    def connect(
        self,
        pid: int | str,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
    ) -> CommandHandle:
        """Follow a background process (by pid or tag): all its output from when this returns, then its end."""
        pid = pid_of(self.list(), pid)
        return self._attach(routes.process_stream(self._sandbox_id, pid), on_stdout, on_stderr)

    def _attach(
        self, call: Call[httpx.Response], on_stdout: OutputHandler | None, on_stderr: OutputHandler | None
    ) -> CommandHandle:
        """A handle on the output stream ``call`` opens, once its start event came (the agent follows it by then)."""
        response = self._http.open(call)
        lines = response.iter_lines()
        try:
            pid = start_pid(next(lines, ""))
        except BaseException:
            response.close()
            raise
        return CommandHandle(
            self._http, self._sandbox_id, pid, on_stdout=on_stdout, on_stderr=on_stderr, opened=(response, lines)
        )

    def list(self) -> builtins.list[ProcessInfo]:
        """The background processes running in the sandbox."""
        return self._http.call(routes.list_processes(self._sandbox_id))

    def kill(self, pid: int | str) -> bool:
        """SIGKILL a process (by pid or tag); ``False`` if there was none."""
        try:
            self._http.call(routes.signal(self._sandbox_id, pid, "SIGKILL"))
        except ProcessNotFound:
            return False
        return True

    def send_stdin(self, pid: int | str, data: str | bytes) -> None:
        """Write text or bytes to a process's stdin (by pid or tag)."""
        for piece in writes(data):
            self._http.call(routes.send_stdin(self._sandbox_id, pid, piece))

    def close_stdin(self, pid: int | str) -> None:
        self._http.call(routes.close_stdin(self._sandbox_id, pid))
