"""Folding a command's NDJSON event stream into its output and result.

The events (docs/api.md): ``start`` (pid), ``stdout``/``stderr`` (data), and
last ``end`` (exit_code, error). Shared by foreground streaming runs and
background handles, sync and async alike; the callers do the reading.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from corral.errors import ExecTimeout, InternalError, ProcessNotFound, error_from_envelope
from corral.sdk.exceptions import CommandExitError, ServerUnavailable
from corral.sdk.models import CommandResult, OutputChunk, ProcessInfo

OutputHandler = Callable[[str], object]
"""Called with each piece of output as it arrives (the async SDK awaits what it returns)."""


def start_pid(line: str) -> int:
    """The pid from a stream's first line, the ``start`` event."""
    try:
        event: Any = json.loads(line)
        if event.get("type") == "start":
            return int(event["pid"])
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    raise InternalError(f"an output stream began without its start event: {line[:200]!r}")


class OutputCollector:
    """The output of one command so far, and how it ended once it has."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.chunks: list[OutputChunk] = []
        self.exit_code: int | None = None
        self.error: str | None = None
        self.ended = False

    def feed(self, line: str) -> OutputChunk | None:
        """Take one NDJSON line; answer the output chunk it carried, if any."""
        if not line.strip():
            return None
        try:
            event: Any = json.loads(line)
        except ValueError as exc:
            raise InternalError(f"bad line in an output stream: {line[:200]!r}") from exc
        kind = event.get("type") if isinstance(event, dict) else None
        if kind in ("stdout", "stderr"):
            chunk = OutputChunk(kind, str(event.get("data") or ""))
            self.chunks.append(chunk)
            return chunk
        if kind == "start":
            self.pid = int(event["pid"])
        elif kind == "end":
            self.ended = True
            self.error = event.get("error")
            code = event.get("exit_code")
            self.exit_code = int(code) if code is not None else (-1 if self.error else 0)
        elif kind == "error":
            # Not in the contract's event list; a server that fails mid-stream may say so.
            raise error_from_envelope(500, {"error": event.get("error", event)})
        return None

    def text(self, stream: str) -> str:
        return "".join(c.data for c in self.chunks if c.stream == stream)

    @property
    def stdout(self) -> str:
        return self.text("stdout")

    @property
    def stderr(self) -> str:
        return self.text("stderr")

    def result(self) -> CommandResult:
        """The result; raises if the command timed out, failed, or the stream broke off."""
        stdout, stderr = self.stdout, self.stderr
        if not self.ended:
            raise ServerUnavailable(
                "the output stream ended before the command did",
                details={"pid": self.pid, "stdout": stdout, "stderr": stderr},
            )
        if self.error == "timeout":
            raise ExecTimeout(
                "the command ran past its timeout and was killed",
                details={"pid": self.pid, "stdout": stdout, "stderr": stderr},
            )
        return check_exit(CommandResult(self.exit_code or 0, stdout, stderr, self.pid))


def check_exit(result: CommandResult) -> CommandResult:
    """``result``, or :class:`CommandExitError` when it exited non-zero."""
    if result.exit_code != 0:
        raise CommandExitError(result)
    return result


def handler_for(
    chunk: OutputChunk, on_stdout: OutputHandler | None, on_stderr: OutputHandler | None
) -> OutputHandler | None:
    return on_stdout if chunk.stream == "stdout" else on_stderr


class HandleBase:
    """What a background command's handle knows, sync or async: its output so far."""

    def __init__(
        self,
        sandbox_id: str,
        pid: int,
        on_stdout: OutputHandler | None,
        on_stderr: OutputHandler | None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self._output = OutputCollector(pid)
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._failure: Exception | None = None
        self._disconnected = False
        self._done = False

    @property
    def pid(self) -> int:
        """The process id, in the sandbox."""
        return self._output.pid or 0

    @property
    def stdout(self) -> str:
        """All it printed to stdout so far."""
        return self._output.stdout

    @property
    def stderr(self) -> str:
        """All it printed to stderr so far."""
        return self._output.stderr

    @property
    def exit_code(self) -> int | None:
        """Its exit code once it has ended, else ``None``."""
        return self._output.exit_code

    def _verdict(self) -> CommandResult:
        if self._failure is not None:
            raise self._failure
        return self._output.result()

    def __repr__(self) -> str:
        state = "running" if self.exit_code is None else f"exit_code={self.exit_code}"
        return f"<{type(self).__name__} pid={self.pid} {state}>"


def pid_of(processes: Iterable[ProcessInfo], pid: int | str) -> int:
    """The pid of the process named by pid or tag."""
    for process in processes:
        if str(process.pid) == str(pid) or (process.tag is not None and process.tag == pid):
            return process.pid
    raise ProcessNotFound(f"no process {pid!r} is running", details={"pid": pid})
