"""Links made ahead: a few addresses kept aside, each with its network namespace and veth pair made and up.

A create given one of these addresses (:meth:`SpareLinks.take`) finds its
link made (see :mod:`corral.net.links`), and runs no ``ip`` on its way: that
was 40-60 ms of a create on two busy cores, beside its disk. Links are made
one at a time in the background, a moment after one was taken and only while
no sandbox is being made, so that they do not compete with the sandboxes
that took them. A server removes its spare
links when it stops; one that was killed leaves them, and the next start
removes them before it makes its own (the addresses it keeps aside may
differ).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from corral.activity import WorkAhead
from corral.net import links

if TYPE_CHECKING:
    from corral.core.sandboxes import SandboxManager

log = logging.getLogger(__name__)

REFILL_DELAY = 1.0
"""Seconds after a link was taken before the next is made: the sandbox that took it gets the CPU first."""


class SpareLinks:
    """Up to ``keep`` addresses whose links are made, for the next creates."""

    def __init__(self, manager: SandboxManager, keep: int) -> None:
        self.manager = manager
        self.keep = keep
        self.taken = 0
        """Creates that took a link made ahead (the others made their own)."""
        self._ready: list[int] = []
        """Slots (reserved in the manager) whose links are made."""
        self._refill = WorkAhead(self._fill, name="corral-spare-links")

    async def start(self) -> None:
        """Remove what an earlier run made ahead, and make links anew."""
        if self.keep:
            await self.manager.runtime.remove_prepared_links(self.manager.settings.sandbox_subnet)
            self.refill()

    def take(self) -> int | None:
        """A slot whose link is made, no longer reserved; None if there is none.

        The caller records its sandbox on that slot before it awaits anything,
        or another create could be given the same slot.
        """
        self.refill(delay=REFILL_DELAY)
        if not self._ready:
            return None
        slot = self._ready.pop(0)
        self.manager.release_slot(slot)
        self.taken += 1
        return slot

    def refill(self, *, delay: float = 0.0) -> None:
        """Make links up to ``keep`` in the background, unless that is under way already."""
        if self.keep:
            self._refill.start(delay=delay)

    async def _fill(self, delay: float) -> None:
        subnet = self.manager.settings.sandbox_subnet
        settle = delay
        while len(self._ready) < self.keep:
            await self.manager.runtime.activity.until_quiet(settle)  # a fork or a burst under way has the CPU first
            settle = 0.0
            slot = self.manager.reserve_slot()
            try:
                made = await self.manager.runtime.prepare_link(links.network_for_slot(subnet, slot))
            except BaseException as exc:
                self.manager.release_slot(slot)  # what was begun of it is gone (Links.create undoes it)
                if isinstance(exc, Exception):
                    log.exception("could not make a link ahead; creates make their own")
                    return
                raise
            if not made:  # this runtime makes no links
                self.manager.release_slot(slot)
                self.keep = 0
                return
            self._ready.append(slot)

    async def aclose(self) -> None:
        """Stop making links, and remove those made."""
        await self._refill.stop()
        if self._ready:
            await self.manager.runtime.remove_prepared_links(self.manager.settings.sandbox_subnet)
            for slot in self._ready:
                self.manager.release_slot(slot)
            self._ready.clear()
