"""Processes the agent starts: spawning, output fan-out, input, signals, exit.

Each :class:`ManagedProcess` runs in its own session (``setsid``) as the
calling user (started by the launcher thread, see :mod:`corral.agent.launcher`,
or by ``subprocess`` for a PTY), with its
stdout/stderr pipes (or its PTY master) watched by the event loop. Output
goes to every :class:`Subscriber` (the ``Start`` stream and any ``Connect``
streams) as it arrives. The exit status comes from the
:class:`~corral.agent.reaper.Reaper`; once the process has exited and its
output is drained, subscribers get an :class:`Exit` and the process is
forgotten.

Signals go to the whole process group, so killing ``bash -c "a | b"`` kills
``a`` and ``b`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
from collections import deque
from dataclasses import dataclass

from .connect import Message, RpcError, as_message, field
from .launcher import Credentials, CwdError, Launcher
from .log import log
from .reaper import Reaper
from .shell_line import direct_command
from .users import FALLBACK_PATH, User, resolve_path

READ_CHUNK = 64 * 1024
MERGE_LIMIT = 256 * 1024  # subscribers merge queued chunks of one stream up to this
HIGH_WATER = 4 * 1024 * 1024  # pause reading a process's output above this backlog
LOW_WATER = 512 * 1024
PTY_GRACE = 0.1  # after exit, how long to wait for a PTY's last output
DRAIN_LIMIT = 4 * 1024 * 1024  # after exit, read at most this much more per stream

# How Go's os.ProcessState describes a signal, which envd sends as `status`.
SIGNAL_TEXT = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
}


@dataclass(frozen=True)
class Exit:
    """How a process ended, in the shape of envd's ``EndEvent``."""

    exit_code: int
    exited: bool
    status: str
    error: str | None

    def to_json(self) -> Message:
        end: Message = {"exitCode": self.exit_code, "exited": self.exited, "status": self.status}
        if self.error is not None:
            end["error"] = self.error
        return end


def exit_of(wait_status: int) -> Exit:
    """An :class:`Exit` from a ``waitpid`` status (exit code -1 when signaled, as Go reports)."""
    if os.WIFEXITED(wait_status):
        code = os.WEXITSTATUS(wait_status)
        text = f"exit status {code}"
        return Exit(code, True, text, None if code == 0 else text)
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        text = "signal: " + SIGNAL_TEXT.get(sig, f"signal {sig}")
        if os.WCOREDUMP(wait_status):
            text += " (core dumped)"
        return Exit(-1, False, text, text)
    return Exit(-1, False, f"wait status {wait_status}", f"wait status {wait_status}")


def parse_signal(value: object) -> int:
    """A signal number from ``SIGNAL_SIGKILL``, ``SIGKILL``, ``KILL`` or ``9``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    elif isinstance(value, str):
        name = value.upper().removeprefix("SIGNAL_")
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            number = int(signal.Signals[name])
        except KeyError:
            raise RpcError("invalid_argument", f"unknown signal {value!r}") from None
    else:
        raise RpcError("invalid_argument", "signal is required")
    if not 0 < number < signal.NSIG:
        raise RpcError("invalid_argument", f"invalid signal {value!r}")
    return number


Output = tuple[str, bytes]  # ("stdout" | "stderr" | "pty", data)
Event = Output | Exit


class Subscriber:
    """One stream's view of a process: its output from now on, then its :class:`Exit`."""

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0
        self.process: ManagedProcess | None = None

    def push(self, event: Event) -> None:
        self._items.append(event)
        if not isinstance(event, Exit):
            self.buffered += len(event[1])
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float | None) -> Event | None:
        """The next event, or ``None`` if ``timeout`` seconds pass first."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                return None
        event = self._items.popleft()
        if isinstance(event, Exit):
            return event
        kind, data = event
        if self._items and not isinstance(self._items[0], Exit) and self._items[0][0] == kind:
            parts = [data]
            size = len(data)
            while (
                self._items and size < MERGE_LIMIT and not isinstance(head := self._items[0], Exit) and head[0] == kind
            ):
                self._items.popleft()
                parts.append(head[1])
                size += len(head[1])
            data = b"".join(parts)
        self.buffered -= len(data)
        if self.process is not None and self.buffered < LOW_WATER:
            self.process.resume_output()
        return kind, data


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _credentials(user: User) -> Credentials | None:
    """What a command as ``user`` must switch to: nothing if not root (it cannot) or already ``user``."""
    if os.geteuid() != 0:
        return None
    # The primary group in the supplementary list or not grants the same access.
    current = (os.getuid(), os.getgid(), set(os.getgroups()) - {os.getgid()})
    if current == (user.uid, user.gid, set(user.groups) - {user.gid}):
        return None
    return user.uid, user.gid, tuple(user.groups)


def _popen(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    stdio: tuple[int, int, int],
    *,
    pty: bool,
    credentials: Credentials | None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` the ``subprocess`` way: ``vfork`` unless it must switch user or set up a PTY."""
    uid, gid, groups = credentials or (None, None, None)
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
        preexec_fn=_make_controlling_tty if pty else None,
        user=uid,
        group=gid,
        extra_groups=None if groups is None else list(groups),
    )


class _ProgramError(OSError):
    """The program itself could not be started (not found, not executable, ...): nothing ran."""


def _ignore_exit(wait_status: int) -> None:
    pass


def _make_controlling_tty() -> None:
    # Runs in the child between fork and exec: stdin is the PTY slave. termios
    # was imported before the fork (by _set_winsize), so this only looks it up.
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    import termios  # here: only PTYs need it, and the agent's start does without

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ManagedProcess:
    """A running (or just exited, still draining) process started by the agent."""

    def __init__(
        self,
        manager: ProcessManager,
        pid: int,
        popen: subprocess.Popen[bytes] | None,
        config: Message,
        tag: str | None,
        user: User,
        *,
        outputs: dict[int, str],
        input_fd: int | None,
        pty_fd: int | None,
    ) -> None:
        self.pid = pid
        self.config = config
        self.tag = tag
        self.user = user
        self.exit: Exit | None = None
        self._manager = manager
        self._loop = manager.loop
        self._popen = popen  # kept so that Popen never waits for (or warns about) the child; None from the launcher
        self._outputs = outputs
        self._input_fd = input_fd
        self._pty_fd = pty_fd
        self._input_lock = asyncio.Lock()
        self._input_waiter: asyncio.Future[None] | None = None
        self._subscribers: set[Subscriber] = set()
        self._paused = False
        self._finished = False
        self._timers: list[asyncio.TimerHandle] = []
        for fd in outputs:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._on_readable, fd)
        if input_fd is not None and input_fd != pty_fd:
            os.set_blocking(input_fd, False)

    def info(self) -> Message:
        """This process as a ``ProcessInfo``."""
        info: Message = {"config": self.config, "pid": self.pid}
        if self.tag is not None:
            info["tag"] = self.tag
        return info

    # --- output -------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        subscriber.process = self
        if self._finished and self.exit is not None:
            subscriber.push(self.exit)
        else:
            self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        subscriber.process = None
        self.resume_output()

    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the PTY slave is gone
            data = b""
        if data:
            self._emit(self._outputs[fd], data)
        else:
            self._close_output(fd)
            self._maybe_finish()

    def _emit(self, kind: str, data: bytes) -> None:
        for subscriber in self._subscribers:
            subscriber.push((kind, data))
            if subscriber.buffered > HIGH_WATER and not self._paused:
                self._paused = True
                for fd in self._outputs:
                    self._loop.remove_reader(fd)

    def resume_output(self) -> None:
        """Read output again once no subscriber is far behind."""
        if not self._paused or any(s.buffered >= LOW_WATER for s in self._subscribers):
            return
        self._paused = False
        for fd in self._outputs:
            self._loop.add_reader(fd, self._on_readable, fd)

    def _close_output(self, fd: int) -> None:
        kind = self._outputs.pop(fd, None)
        if kind is None:
            return
        self._loop.remove_reader(fd)
        if fd != self._pty_fd:
            os.close(fd)

    def _drain_outputs(self) -> None:
        for fd in list(self._outputs):
            budget = DRAIN_LIMIT
            while budget > 0:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:  # EAGAIN: nothing buffered; EIO: closed PTY
                    break
                if not data:
                    break
                budget -= len(data)
                self._emit(self._outputs[fd], data)
            self._close_output(fd)
        self._maybe_finish()

    # --- exit ---------------------------------------------------------------

    def on_exit(self, wait_status: int) -> None:
        """Called by the reaper with the process's wait status."""
        self.exit = exit_of(wait_status)
        if self._popen is not None:
            self._popen.returncode = self.exit.exit_code if self.exit.exited else -os.WTERMSIG(wait_status)
        if self._pty_fd is not None and self._outputs:
            # PTY output reaches the master asynchronously: give it a moment
            # (EIO ends it early unless a background job keeps the slave open).
            self._timers.append(self._loop.call_later(PTY_GRACE, self._drain_outputs))
        else:
            # A pipe already holds everything the process wrote; a background
            # grandchild keeping it open must not hold back the end event.
            self._drain_outputs()

    def _maybe_finish(self) -> None:
        if self.exit is None or self._outputs or self._finished:
            return
        self._finished = True
        for timer in self._timers:
            timer.cancel()
        self._close_input()
        if self._pty_fd is not None:
            os.close(self._pty_fd)
            self._pty_fd = None
        for subscriber in self._subscribers:
            subscriber.push(self.exit)
        self._subscribers.clear()
        self._manager.forget(self)
        log("process ended", pid=self.pid, status=self.exit.status)

    def set_deadline(self, seconds: float) -> None:
        """SIGKILL the process group if it still runs ``seconds`` from now."""
        self._timers.append(self._loop.call_later(seconds, self._on_deadline))

    def _on_deadline(self) -> None:
        if self.exit is None:
            log("process deadline passed, killing it", pid=self.pid)
            self.send_signal(signal.SIGKILL)

    # --- input and control ----------------------------------------------------

    async def write_input(self, data: bytes) -> None:
        """Write to stdin (or the PTY), waiting while the pipe is full."""
        async with self._input_lock:
            view = memoryview(data)
            while view:
                fd = self._input_fd
                if fd is None:
                    raise RpcError("failed_precondition", f"stdin of process {self.pid} is closed")
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await self._writable(fd)
                    continue
                except OSError as exc:
                    raise RpcError("failed_precondition", f"cannot write to process {self.pid}: {exc}") from None
                view = view[written:]

    async def _writable(self, fd: int) -> None:
        self._input_waiter = waiter = self._loop.create_future()
        self._loop.add_writer(fd, _resolve, waiter)
        try:
            await waiter
        finally:
            self._input_waiter = None
            if self._input_fd == fd:
                self._loop.remove_writer(fd)

    async def close_stdin(self) -> None:
        """EOF on stdin; for a PTY, the terminal's EOF character (Ctrl-D)."""
        if self._pty_fd is not None:
            await self.write_input(b"\x04")
            return
        async with self._input_lock:
            self._close_input()

    def _close_input(self) -> None:
        fd, self._input_fd = self._input_fd, None
        if fd is None or fd == self._pty_fd:
            return
        if self._input_waiter is not None:
            self._loop.remove_writer(fd)
            _resolve(self._input_waiter)
        os.close(fd)

    def send_signal(self, signum: int) -> None:
        """Signal the process group (the process alone if that fails)."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def resize(self, cols: int, rows: int) -> None:
        if self._pty_fd is None:
            raise RpcError("failed_precondition", f"process {self.pid} has no PTY")
        _set_winsize(self._pty_fd, cols, rows)


class ProcessManager:
    """Starts processes and keeps the table of those still running."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reaper: Reaper, base_env: dict[str, str]) -> None:
        self.loop = loop
        self._reaper = reaper
        self.launcher = Launcher()
        self._base_env = base_env
        # The image's WORKDIR: where commands start when they name no cwd (else the user's home).
        self._workdir = os.environ.get("CORRAL_AGENT_WORKDIR", "")
        self._processes: dict[int, ManagedProcess] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def processes(self) -> list[ManagedProcess]:
        return list(self._processes.values())

    def sessions(self) -> set[int]:
        """Session ids of the running processes (each is started as a session leader)."""
        return set(self._processes)

    def forget(self, process: ManagedProcess) -> None:
        self._processes.pop(process.pid, None)
        if not self._processes:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no process is left; ``False`` if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def find(self, selector: Message) -> ManagedProcess:
        """The process a ``ProcessSelector`` (``{"pid": n}`` or ``{"tag": s}``) names."""
        pid = field(selector, "pid")
        tag = field(selector, "tag")
        if pid is not None:
            try:
                process = self._processes.get(int(pid))
            except (TypeError, ValueError):
                raise RpcError("invalid_argument", f"invalid pid {pid!r}") from None
            if process is None:
                raise RpcError("not_found", f"process with pid {pid} not found")
            return process
        if tag is not None:
            for process in self._processes.values():
                if process.tag == tag:
                    return process
            raise RpcError("not_found", f"process with tag {tag!r} not found")
        raise RpcError("invalid_argument", "a process selector needs a pid or a tag")

    def environment(self, user: User, envs: dict[str, str]) -> dict[str, str]:
        env = dict(self._base_env)
        env.setdefault("PATH", FALLBACK_PATH)
        env.setdefault("LANG", "C.UTF-8")
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name, SHELL=user.shell or "/bin/sh")
        env.update(envs)
        return env

    async def start(self, user: User, request: Message, subscriber: Subscriber) -> ManagedProcess:
        """Spawn what a ``StartRequest`` describes; ``subscriber`` sees all its output.

        No command forks the agent: one as another user starts from the
        launcher thread (:mod:`corral.agent.launcher`), one as the agent's own
        user by ``subprocess.Popen`` with a ``vfork``. PTY commands (which need
        their terminal made the controlling one) are started by ``Popen`` too,
        which forks when it must switch user for them.
        """
        spec = as_message(field(request, "process"), "process")
        cmd = field(spec, "cmd")
        if not cmd or not isinstance(cmd, str):
            raise RpcError("invalid_argument", "process.cmd is required")
        args = [str(arg) for arg in field(spec, "args") or []]
        envs = {str(k): str(v) for k, v in as_message(field(spec, "envs"), "envs").items()}
        cwd_arg = field(spec, "cwd")
        pty = field(request, "pty")
        tag = field(request, "tag")
        stdin = field(request, "stdin")  # absent means a stdin pipe, as in envd
        if cwd_arg is not None and not isinstance(cwd_arg, str):
            raise RpcError("invalid_argument", "process.cwd must be a string")

        try:
            cwd = resolve_path(cwd_arg or self._workdir or "", user)
        except ValueError as exc:
            raise RpcError("invalid_argument", str(exc)) from None
        if not os.path.isdir(cwd):
            if cwd_arg:
                raise RpcError("invalid_argument", f"cwd '{cwd}' does not exist")
            cwd = "/"
        env = self.environment(user, envs)
        if pty is not None:
            env.setdefault("TERM", "xterm-256color")

        config: Message = {"cmd": cmd, "args": args, "envs": envs}
        if cwd_arg is not None:
            config["cwd"] = cwd_arg
        cmdline = " ".join([cmd, *args])
        popen: subprocess.Popen[bytes] | None = None

        child_fds: list[int] = []  # the child's ends: closed here once it has them
        parent_fds: list[int] = []  # ours: closed here only if the spawn fails
        input_fd: int | None = None
        pty_fd: int | None = None
        try:
            if pty is not None:
                size = as_message(field(as_message(pty, "pty"), "size"), "pty.size")
                master, slave = os.openpty()
                parent_fds.append(master)
                child_fds.append(slave)
                _set_winsize(master, int(field(size, "cols", 80)), int(field(size, "rows", 24)))
                stdio = (slave, slave, slave)
                outputs = {master: "pty"}
                input_fd = pty_fd = master
            else:
                stdin_read, stdin_write = os.pipe()
                out_read, out_write = os.pipe()
                err_read, err_write = os.pipe()
                child_fds += [stdin_read, out_write, err_write]
                parent_fds += [out_read, err_read]
                if stdin is False:
                    child_fds.append(stdin_write)  # closed: an empty stdin, no /dev/null needed
                else:
                    parent_fds.append(stdin_write)
                    input_fd = stdin_write
                stdio = (stdin_read, out_write, err_write)
                outputs = {out_read: "stdout", err_read: "stderr"}
            direct = None if pty is not None else direct_command(cmd, args, env, cwd)
            credentials = _credentials(user)
            without_shell: dict[str, str] = {}
            if direct is not None:
                try:
                    pid, popen = self._launch(*direct, cwd=cwd, stdio=stdio, pty=False, credentials=credentials)
                    without_shell["without_shell"] = direct[0]
                except _ProgramError:  # bash reports it in its own words
                    direct = None
            if direct is None:
                pid, popen = self._launch(
                    cmd, args, env, cwd=cwd, stdio=stdio, pty=pty is not None, credentials=credentials
                )
        except (OSError, subprocess.SubprocessError, ValueError, TypeError) as exc:
            for fd in parent_fds:
                os.close(fd)
            raise RpcError("invalid_argument", f"error starting process '{cmdline}': {exc}") from None
        except BaseException:  # cancelled: the caller is gone
            for fd in parent_fds:
                os.close(fd)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)

        process = ManagedProcess(
            self,
            pid,
            popen,
            config,
            tag if isinstance(tag, str) else None,
            user,
            outputs=outputs,
            input_fd=input_fd,
            pty_fd=pty_fd,
        )
        process.subscribe(subscriber)
        self._processes[process.pid] = process
        self._idle.clear()
        self._reaper.watch(process.pid, process.on_exit)  # before yielding to the loop
        started_by = "launcher" if popen is None else "subprocess"
        log("process started", pid=process.pid, cmd=cmdline, user=user.name, cwd=cwd, by=started_by, **without_shell)
        return process

    def _launch(
        self,
        cmd: str,
        args: list[str],
        env: dict[str, str],
        *,
        cwd: str,
        stdio: tuple[int, int, int],
        pty: bool,
        credentials: Credentials | None,
    ) -> tuple[int, subprocess.Popen[bytes] | None]:
        """Start ``cmd args``: its pid, and its ``Popen`` if ``subprocess`` started it.

        A command as another user goes to the launcher thread; one as the
        agent's own user needs no switch, so ``Popen`` starts it from here
        with a ``vfork`` (no hand-over to another thread). ``Popen`` also
        starts PTY commands, every command if the launcher is unavailable, and
        a user's command when that user is at its process limit (``EAGAIN``:
        nothing ran, and the agent, as root, may still start it).
        """
        if not pty and credentials is not None and self.launcher.available:
            try:
                return self.launcher.spawn(cmd, [cmd, *args], env, cwd, stdio, credentials=credentials), None
            except CwdError:
                raise
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise _ProgramError(exc.errno, exc.strerror, cmd) from None
        try:
            popen = _popen([cmd, *args], cwd, env, stdio, pty=pty, credentials=credentials)
        except OSError as exc:
            if exc.errno is not None and exc.filename != cwd:
                raise _ProgramError(exc.errno, exc.strerror, exc.filename) from None
            raise
        return popen.pid, popen

    def signal_all(self, signum: int) -> None:
        for process in list(self._processes.values()):
            process.send_signal(signum)
