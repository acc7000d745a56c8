"""Resource limits the agent enforces inside its sandbox.

Under gVisor a sandbox is one host process: when a host cgroup limit is hit the
whole sandbox dies. So the runtime sets the user-facing limits a little below
the host's and asks the agent to enforce them from inside, through two
environment variables:

- ``CORRAL_AGENT_PIDS_LIMIT``: ``RLIMIT_NPROC`` of the agent, inherited by every
  process it starts (set on the agent itself so spawning keeps ``vfork``).
- ``CORRAL_AGENT_MEMORY_LIMIT_MB``: an OOM killer. Every 50 ms it measures the
  memory in use; past the limit the largest process is SIGKILLed and an
  ``oom:`` line is logged. Like the kernel's, it then waits for its victim's
  memory to come back before it picks another: gVisor returns a dead
  process's memory tens of milliseconds after it is reaped, and a process
  started in between (the next command) must not pay for it. It waits at most
  ``OOM_RELEASE_WAIT``, and no longer once the memory in use has grown
  ``OOM_GROWTH`` past what it was at the kill (another process allocating).
  A victim is never picked twice, nor is a zombie: SIGKILL takes effect
  asynchronously, and a process still dying would otherwise shield the one
  that is allocating.
  As PID 1 (in a sandbox) the measure is the kernel's own, ``MemTotal -
  MemAvailable`` from ``/proc/meminfo`` (gVisor counts what its processes
  really use there, shared pages once, and file caches not at all), and
  ``/proc`` is only walked to pick the victim. Otherwise (the agent run as a
  plain host process, in tests) it is the resident memory of the sessions it
  started, summed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

from .log import log

PIDS_ENV = "CORRAL_AGENT_PIDS_LIMIT"
MEMORY_ENV = "CORRAL_AGENT_MEMORY_LIMIT_MB"
OOM_INTERVAL = 0.05
OOM_MARGIN = 4 << 20  # act just before the limit, not after it
OOM_RELEASE_WAIT = 0.5  # seconds a victim's memory may take to come back
OOM_GROWTH = 32 << 20  # grown more than this since the kill: someone else is allocating
_PAGE = os.sysconf("SC_PAGE_SIZE")


def apply_pids_limit(env: dict[str, str]) -> None:
    """Set ``RLIMIT_NPROC`` from ``CORRAL_AGENT_PIDS_LIMIT``, if given."""
    value = env.get(PIDS_ENV)
    if not value:
        return
    import resource

    try:
        limit = int(value)
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    except (ValueError, OSError) as exc:
        log("cannot apply the pids limit", value=value, error=str(exc))
    else:
        log("pids limit set", limit=limit)


class MemoryInUse:
    """``MemTotal - MemAvailable`` in bytes, if /proc/meminfo tells both.

    The file stays open and each measure is one ``pread`` from its start, which
    makes the kernel (gVisor's too) write it anew: the killer measures twenty
    times a second in every sandbox, and an open, read and close each time
    costs an idle sandbox more CPU than one call.
    """

    def __init__(self, path: str = "/proc/meminfo") -> None:
        self._path = path
        self._fd = -1

    def __call__(self) -> int | None:
        try:
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDONLY)  # not inherited by children
            data = os.pread(self._fd, 16384, 0)
        except OSError:
            self.close()
            return None
        fields: dict[bytes, int] = {}
        for line in data.splitlines():
            name, _, rest = line.partition(b":")
            if name in (b"MemTotal", b"MemAvailable"):
                try:
                    fields[name] = int(rest.split()[0]) << 10
                except (ValueError, IndexError):
                    return None
        if len(fields) < 2:
            return None
        return fields[b"MemTotal"] - fields[b"MemAvailable"]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Stat(NamedTuple):
    session: int
    rss: int  # bytes
    name: str
    dying: bool  # a zombie, or being torn down: its memory is on its way back
    started: int  # clock ticks after boot: with the pid, names one process for good


def _read_stat(pid: int) -> _Stat | None:
    """What the killer needs of ``pid`` from ``/proc/<pid>/stat``, if it still exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    name_end = stat.rfind(")")
    name = stat[stat.find("(") + 1 : name_end]
    fields = stat[name_end + 2 :].split()
    try:
        # fields[0] is field 3 (state): session is field 6, start time field 22, rss (pages) field 24.
        return _Stat(int(fields[3]), int(fields[21]) * _PAGE, name, fields[0] in ("Z", "X"), int(fields[19]))
    except (IndexError, ValueError):
        return None


class OomKiller:
    """Keeps the memory of the agent's processes under a limit by killing the largest."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit_bytes: int,
        sessions: Callable[[], set[int]],
        *,
        in_use: Callable[[], int | None] | None = None,
    ) -> None:
        """``in_use`` measures the memory in use (default: the kernel's measure as PID 1, else none)."""
        self._loop = loop
        self._limit = limit_bytes
        self._sessions = sessions  # the session ids the agent started
        self._timer: asyncio.TimerHandle | None = None
        self._last_kill: tuple[int, float] | None = None  # (memory in use then, when)
        self._victims: set[tuple[int, int]] = set()  # (pid, start time) of those killed, until gone
        self._everyone = os.getpid() == 1  # PID 1 of a sandbox: every process is the agent's
        self._in_use = in_use or (MemoryInUse() if self._everyone else lambda: None)

    @classmethod
    def from_env(
        cls, loop: asyncio.AbstractEventLoop, env: dict[str, str], sessions: Callable[[], set[int]]
    ) -> OomKiller | None:
        value = env.get(MEMORY_ENV)
        if not value:
            return None
        try:
            limit_mb = int(value)
        except ValueError:
            log("ignoring a malformed memory limit", value=value)
            return None
        log("memory limit set", limit_mb=limit_mb)
        return cls(loop, limit_mb << 20, sessions)

    def start(self) -> None:
        self._timer = self._loop.call_later(OOM_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        try:
            self.check()
        finally:
            if self._timer is not None:
                self._timer = self._loop.call_later(OOM_INTERVAL, self._tick)

    def check(self) -> int | None:
        """Kill the largest process if over the limit; its pid, if one was killed."""
        me, everyone = os.getpid(), self._everyone
        sessions = set() if everyone else self._sessions()
        if not everyone and not sessions:
            return None
        in_use = self._in_use()
        if in_use is not None and in_use < self._limit - OOM_MARGIN:
            self._last_kill = None
            return None  # the common case: one small read, no walk of /proc
        if in_use is not None and self._releasing(in_use):
            return None
        total = 0
        largest: tuple[int, _Stat] | None = None
        victims: set[tuple[int, int]] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid, info = int(entry), _read_stat(int(entry))
            if info is None or (not everyone and info.session not in sessions):
                continue
            total += info.rss
            if (pid, info.started) in self._victims:
                victims.add((pid, info.started))
            elif not info.dying and (largest is None or info.rss > largest[1].rss):
                largest = (pid, info)
        self._victims = victims  # those gone are forgotten, so a reused pid is fair game
        if in_use is not None:
            total = in_use
        elif total <= self._limit:
            return None
        if largest is None:
            return None
        pid, info = largest
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        self._victims.add((pid, info.started))
        if in_use is not None:
            self._last_kill = (in_use, time.monotonic())
        log(
            "oom: memory limit exceeded, killed the largest process",
            pid=pid,
            command=info.name,
            rss_mb=info.rss >> 20,
            total_mb=total >> 20,
            limit_mb=self._limit >> 20,
        )
        return pid

    def _releasing(self, in_use: int) -> bool:
        """Whether the last victim's memory may still be on its way back (so no one else is killed yet)."""
        if self._last_kill is None:
            return False
        in_use_then, killed_at = self._last_kill
        if in_use <= in_use_then + OOM_GROWTH and time.monotonic() - killed_at < OOM_RELEASE_WAIT:
            return True
        self._last_kill = None
        return False
