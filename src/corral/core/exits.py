"""Notices a sandbox whose process exits on its own (the host's OOM killer, a crash, a ``kill`` on the host).

Without it such a sandbox stayed ``running`` in the store until a call for it
waited out the agent's connect timeout (16 s) and answered 502; a warm pool
handed it out. Each running, paused or pooled sandbox's host process is
watched with a pidfd, which the event loop reads once the process exits. An
exit is judged once the lifecycle operation under way (a hibernate or a
checkpoint ends the process on purpose) is over, and by the runtime's own
state: a sandbox that no longer runs is ``dead``; a pooled one is killed and
its pool refilled.

The watches are set by :meth:`ExitWatch.sweep`, which the reaper calls every
round: a sandbox started, woken or found at a restart is watched within a
second, and one that died before it was watched is judged at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral import hostcmd
from corral.core.lifecycle import PAUSED, RUNNING
from corral.core.pools import POOLED
from corral.errors import CorralError
from corral.runtimes.base import RuntimeState
from corral.store.models import SandboxRow

if TYPE_CHECKING:
    from corral.core.sandboxes import SandboxManager

log = logging.getLogger(__name__)

WATCHED = frozenset({RUNNING, PAUSED, POOLED})
"""States whose sandbox has a process of its own on the host."""
KILLED_KEPT = 60.0
"""Seconds a killed sandbox's id is remembered, so that the exit its kill caused is not judged."""


class ExitWatch:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._fds: dict[str, int] = {}
        self._pending: set[str] = set()  # being looked up or judged
        self._sweeping: asyncio.Task[None] | None = None
        self._killed: dict[str, float] = {}
        """Sandboxes being killed, and when: their exits are no news (kept a while, then forgotten)."""
        self.pool_lost: list[Callable[[str], None]] = []
        """Called with a pool's key when one of its waiting sandboxes died (and was removed)."""

    def killing(self, sandbox_id: str) -> None:
        """The sandbox is being killed: its process's exit is not to be judged."""
        self._unwatch(sandbox_id)
        self._killed[sandbox_id] = time.monotonic()

    def was_killed(self, sandbox_id: str) -> bool:
        """Whether the sandbox is being, or was lately, killed (see :data:`KILLED_KEPT`)."""
        return sandbox_id in self._killed

    def sweep(self) -> None:
        """Watch every sandbox that has a process and no watch yet (one lookup at a time, niced)."""
        now = time.monotonic()
        for sandbox_id in [k for k, since in self._killed.items() if now - since > KILLED_KEPT]:
            del self._killed[sandbox_id]
        if self._sweeping is not None and not self._sweeping.done():
            return
        rows = [
            row
            for row in self.manager.store.list_sandboxes(states=set(WATCHED))
            if row.id not in self._fds and row.id not in self._pending
        ]
        if rows:
            self._pending.update(row.id for row in rows)
            self._sweeping = asyncio.create_task(self._watch_all(rows), name="corral-exit-watch")

    async def _watch_all(self, rows: list[SandboxRow]) -> None:
        # After a restart every sandbox is looked up: a burst of runsc processes must not
        # slow the sandboxes themselves.
        with hostcmd.in_the_background():
            for row in rows:
                await self._watch(row)

    async def _watch(self, row: SandboxRow) -> None:
        try:
            pid = await self.manager.runtime.host_pid(self.manager.handle_of(row))
            fd = os.pidfd_open(pid) if pid is not None else None
        except ProcessLookupError:
            fd = None
        except Exception:
            self._pending.discard(row.id)
            log.exception("sandbox %s: cannot watch its process", row.id)
            return
        if fd is None:  # no process (gone already, or its state changed meanwhile): judge it now
            self.manager.in_background(self._judge(row.id), name=f"corral-exit-{row.id}")
            return
        self._pending.discard(row.id)
        self._fds[row.id] = fd
        asyncio.get_running_loop().add_reader(fd, self._exited, row.id)

    def _exited(self, sandbox_id: str) -> None:
        self._unwatch(sandbox_id)
        self._pending.add(sandbox_id)
        self.manager.in_background(self._judge(sandbox_id), name=f"corral-exit-{sandbox_id}")

    async def _judge(self, sandbox_id: str) -> None:
        try:
            await self.manager.lifecycle.settled(sandbox_id)
            row = self.manager.store.get_sandbox(sandbox_id)
            if row is None or row.state not in WATCHED or sandbox_id in self._killed:
                return  # killed, hibernated, dead already: its process ended on purpose or was seen to
            seen = await self.manager.runtime.state(self.manager.handle_of(row))
            if seen not in (RuntimeState.STOPPED, RuntimeState.MISSING):
                return  # another process runs it now (woken, restored): the next sweep watches that one
            if row.state == POOLED:
                log.warning("pooled sandbox %s: its process exited on its own; removing it", sandbox_id)
                with contextlib.suppress(CorralError):
                    await self.manager.kill(sandbox_id)
                for lost in self.pool_lost:
                    lost(row.pool or "")
            else:
                handle = self.manager.handle_of(row)
                cause = await self.manager.runtime.stop_cause(handle) or f"the runtime reports it {seen}"
                self.manager.mark_dead(sandbox_id, f"its process exited on its own ({cause})")
        finally:
            self._pending.discard(sandbox_id)

    def _unwatch(self, sandbox_id: str) -> None:
        fd = self._fds.pop(sandbox_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
        for sandbox_id in list(self._fds):
            self._unwatch(sandbox_id)
