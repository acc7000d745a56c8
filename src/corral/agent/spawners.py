"""The agent's side of the spawners (:mod:`corral.agent.spawner`): one per user, started on demand.

:class:`Spawners` keeps at most one spawner per set of credentials. The first
command for a user is started the old way, and :data:`START_DELAY` later a
spawner starts for that user; once it says it is ready, that user's commands
go through it. Until a user runs a command, its spawner costs nothing (a
running one costs about 5 MiB).

Each spawner's children are the agent's grandchildren, so their exit statuses
come from the spawner (``EXITED`` records) and are handed to the
:class:`~corral.agent.reaper.Reaper` like its own. A spawner can die (a user
may ``kill -9 -1``): commands then start the old way until a new one is
ready, and its running children are re-parented to PID 1, which is the agent
in a sandbox, so the reaper collects them. Outside a sandbox (the agent as
a plain process, in tests) they are re-parented elsewhere: their end is seen
through a pidfd and, their status being lost, reported as killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import marshal
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from .log import log
from .reaper import Reaper
from .spawner import EXITED, FAILED, MAX_REQUEST, READY, RECORD, SPAWNED, WHERE_CWD
from .users import User

START_DELAY = 0.2
"""Seconds after a user's first command at which its spawner starts (its boot must not slow that command)."""
REPLY_TIMEOUT = 5.0
"""Seconds a spawner has to answer a request before it is killed and replaced."""
RETRY_AFTER = 5.0
"""Seconds after a spawner failed to start (died before it was ready) before another is tried for the same user."""
_SPAWNER_CODE = "from corral.agent.spawner import main; main()"
_KILLED = signal.SIGKILL  # the wait status of a process killed by SIGKILL

Credentials = tuple[int, int, tuple[int, ...]]


class Unavailable(Exception):
    """The spawner cannot take this command (not ready, gone, or the request is too large)."""


class SpawnError(OSError):
    """The spawner could not start the command; ``in_cwd`` if changing to its cwd failed."""

    def __init__(self, errno: int, *, in_cwd: bool) -> None:
        super().__init__(errno, os.strerror(errno))
        self.in_cwd = in_cwd


def interpreter_command() -> list[str]:
    """How to start another interpreter like this one: the same binary, loader and isolation flags."""
    exe = os.path.realpath("/proc/self/exe")
    argv = [sys.executable]
    if exe != os.path.realpath(sys.executable):  # run by an explicit loader, as from the bundle
        argv = [exe, "--library-path", os.path.dirname(exe), "--inhibit-cache", sys.executable]
    flags = {"-I": sys.flags.isolated, "-S": sys.flags.no_site, "-B": sys.flags.dont_write_bytecode}
    return argv + [flag for flag, on in flags.items() if on]


def parent_in_stat(stat: bytes) -> int | None:
    """The parent pid in a ``/proc/PID/stat`` line; ``None`` while the process is being reaped (state X, parent 0).

    A malformed line gives -1, nobody's pid.
    """
    try:
        state, ppid = stat.rsplit(b")", 1)[1].split()[:2]
        return None if state == b"X" else int(ppid)
    except (IndexError, ValueError):
        return -1


class Spawner:
    """One spawner process running as ``credentials``, and the children it started for us."""

    def __init__(self, owner: Spawners, credentials: Credentials, name: str) -> None:
        self.credentials = credentials
        self.name = name
        self.ready = False
        self.served = False  # it was ready once: if it dies now, a new one may start at once
        self.dead = False
        self.children: set[int] = set()
        self._owner = owner
        self._loop = owner.loop
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._seq = 0
        uid, gid, groups = credentials
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [*owner.command, "-c", _SPAWNER_CODE, str(theirs.fileno()), str(uid), str(gid)]
            self._popen = subprocess.Popen(
                [*argv, ",".join(map(str, groups))],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env={},
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._popen.pid
        self._sock = ours
        ours.setblocking(False)
        owner.reaper.watch(self.pid, self._on_own_exit)
        self._loop.add_reader(ours.fileno(), self._on_readable)
        log("spawner starting", user=name, pid=self.pid)

    def spawn(
        self, cmd: str, argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]
    ) -> asyncio.Future[int]:
        """Ask for ``argv`` to be started; the future gives its pid or raises :class:`SpawnError`."""
        if not self.ready or self.dead:
            raise Unavailable(f"the spawner for {self.name} is not ready")
        self._seq += 1
        data = marshal.dumps((self._seq, cmd, argv, env, cwd))
        if len(data) > MAX_REQUEST:
            raise Unavailable(f"a request of {len(data)} bytes is too large for a spawner")
        try:
            self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", *stdio))])
        except BlockingIOError:
            raise Unavailable(f"the spawner for {self.name} is busy") from None
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise Unavailable(f"a request of {len(data)} bytes is too large for a spawner") from None
            self.close(f"cannot reach it: {exc}")
            raise Unavailable(f"the spawner for {self.name} is gone") from None
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending[self._seq] = future
        return future

    def _on_readable(self) -> None:
        while not self.dead:
            try:
                data = self._sock.recv(RECORD.size)
            except BlockingIOError:
                return
            except OSError as exc:
                self.close(f"cannot read from it: {exc}")
                return
            if len(data) != RECORD.size:
                self.close("it closed its end" if not data else "it sent a malformed record")
                return
            self._on_record(*RECORD.unpack(data))

    def _on_record(self, kind: int, a: int, b: int, c: int) -> None:
        if kind == EXITED:
            if a in self.children:
                self.children.discard(a)
                self._owner.reaper.exited(a, b)
        elif kind == SPAWNED:
            if not self._is_child(b):
                self.close(f"it reported pid {b}, not a child of its own")
                return
            future = self._pending.pop(a, None)
            if future is None or future.done():  # the caller gave up: nobody would see it
                with contextlib.suppress(OSError):
                    os.killpg(b, signal.SIGKILL)
                return
            self.children.add(b)
            future.set_result(b)
        elif kind == FAILED:
            future = self._pending.pop(a, None)
            if future is not None and not future.done():
                future.set_exception(SpawnError(b, in_cwd=c == WHERE_CWD))
        elif kind == READY:
            self.ready = self.served = True
            log("spawner ready", user=self.name, pid=self.pid)

    def _is_child(self, pid: int) -> bool:
        """Whether ``pid`` is the spawner's child (or already gone): a spawner runs as a user, so it is checked."""
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return True  # ended and reaped already: its EXITED record follows
        parent = parent_in_stat(stat)
        return parent is None or parent == self.pid

    def _on_own_exit(self, wait_status: int) -> None:
        self._popen.returncode = os.waitstatus_to_exitcode(wait_status)
        self._on_readable()  # what it sent before it went
        self.close(f"it exited ({os.waitstatus_to_exitcode(wait_status)})")

    def abandon(self, reason: str) -> None:
        """Kill it and stop using it: it stopped answering."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self.close(reason)

    def close(self, reason: str | None = None) -> None:
        """Stop using it (it exits once its socket closes); hand its running children to whoever reaps them."""
        if self.dead:
            return
        self.dead = True
        self.ready = False
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"the spawner for {self.name} is gone"))
        self._pending.clear()
        if reason is not None:
            log("spawner gone", user=self.name, pid=self.pid, reason=reason)
        self._owner.gone(self, failed=reason is not None and not self.served)
        if os.getpid() != 1:
            for pid in self.children:
                self._watch_orphan(pid)
        self.children.clear()

    def _watch_orphan(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self._owner.reaper.exited(pid, _KILLED)
            return

        def ended() -> None:
            self._loop.remove_reader(fd)
            os.close(fd)
            self._owner.reaper.exited(pid, _KILLED)

        self._loop.add_reader(fd, ended)


class Spawners:
    """At most one spawner per set of credentials, started when first wanted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reaper: Reaper) -> None:
        self.loop = loop
        self.reaper = reaper
        self.command = interpreter_command()
        self._spawners: dict[Credentials, Spawner] = {}
        self._retry_at: dict[Credentials, float] = {}
        self._scheduled: set[Credentials] = set()

    def get(self, user: User) -> Spawner | None:
        """``user``'s spawner if it is ready; else ``None``, and one starts soon for the next command."""
        key = (user.uid, user.gid, user.groups)
        spawner = self._spawners.get(key)
        if spawner is None and key not in self._scheduled:
            self._scheduled.add(key)
            self.loop.call_later(START_DELAY, self.start, user)
        return spawner if spawner is not None and spawner.ready else None

    def start(self, user: User) -> None:
        """Start ``user``'s spawner unless it runs, or failed a moment ago."""
        key = (user.uid, user.gid, user.groups)
        self._scheduled.discard(key)
        if key in self._spawners or time.monotonic() < self._retry_at.get(key, 0.0):
            return
        try:
            self._spawners[key] = Spawner(self, key, user.name)
        except OSError as exc:
            log("cannot start a spawner", user=user.name, error=str(exc))
            self._retry_at[key] = time.monotonic() + RETRY_AFTER

    def gone(self, spawner: Spawner, *, failed: bool) -> None:
        if self._spawners.get(spawner.credentials) is spawner:
            del self._spawners[spawner.credentials]
        if failed:
            self._retry_at[spawner.credentials] = time.monotonic() + RETRY_AFTER

    def close(self) -> None:
        for spawner in list(self._spawners.values()):
            spawner.close()
