"""The one place that waits for children: the PID 1 duty of reaping zombies.

A single SIGCHLD handler drains ``waitpid(-1, WNOHANG)`` and hands each exit
status to whoever registered the pid with :meth:`Reaper.watch`; everything
else (orphans re-parented to PID 1) is reaped silently. Nothing else in the
agent may call ``waitpid``: asyncio's child watchers are not used for this
reason, and ``subprocess.Popen`` objects are never waited on.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

ExitCallback = Callable[[int], None]


class Reaper:
    """Reaps every child of this process, dispatching statuses by pid."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: dict[int, ExitCallback] = {}

    def install(self) -> None:
        """Start handling SIGCHLD (and reap anything already dead)."""
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def uninstall(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, pid: int, callback: ExitCallback) -> None:
        """Call ``callback(wait_status)`` once child ``pid`` has exited.

        Register right after spawning, before yielding to the event loop: the
        reaping runs from the loop, so it cannot have collected ``pid`` yet.
        """
        self._watched[pid] = callback

    def reap(self) -> None:
        """Collect every exited child; safe to call at any time."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            callback = self._watched.pop(pid, None)
            if callback is not None:  # else an orphan: reaped, nothing more to do
                callback(status)
