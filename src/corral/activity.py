"""Whether sandboxes are being made: work done ahead (spare disks and links) waits for a quiet moment.

Spares are made so that creates find them ready; made while a fork or a
burst of creates runs, they would take CPU from the very sandboxes that
wait for them. So they are made by a :class:`WorkAhead` task, one at a time,
whose host commands run at low CPU priority, and which waits for
:meth:`Activity.until_quiet` before each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from corral import hostcmd


class Activity:
    def __init__(self) -> None:
        self._making = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.asynccontextmanager
    async def making(self) -> AsyncIterator[None]:
        """Held while a sandbox is being made."""
        self._making += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._making -= 1
            if not self._making:
                self._quiet.set()

    async def until_quiet(self, settle: float = 0.0) -> None:
        """Return once no sandbox has been in the making for ``settle`` seconds."""
        while True:
            await self._quiet.wait()
            await asyncio.sleep(settle)
            if self._quiet.is_set():
                return


class WorkAhead:
    """One background task at a time running ``fill(delay)``; its host commands yield the CPU to all others."""

    def __init__(self, fill: Callable[[float], Coroutine[Any, Any, None]], *, name: str) -> None:
        self._fill = fill
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self, *, delay: float = 0.0) -> None:
        """Run ``fill(delay)`` in the background, unless it is running already."""
        if self._task is not None and not self._task.done():
            return
        with hostcmd.in_the_background():  # the task keeps this context
            self._task = asyncio.create_task(self._fill(delay), name=self._name)

    async def stop(self) -> None:
        """Cancel it, and wait until it has stopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
