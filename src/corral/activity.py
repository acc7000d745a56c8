"""Whether sandboxes are being made: work done ahead (spare disks and links) waits for a quiet moment.

Spares are made so that creates find them ready; made while a fork or a
burst of creates runs, they would take CPU from the very sandboxes that
wait for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


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
