"""Warm pools: sandboxes of one image or template started ahead, handed out on create.

A pool is a key (``image:<canonical name>`` or ``template:<name>``) and a size.
The pool keeps that many sandboxes started (state ``pooled``, hidden from
lists, no timeout). A create whose image or template has a pool, and which
asks for the pool's resources (the defaults), claims one of them: the claim
sets its metadata, environment, timeout and timeout policy and hands it out,
and the pool refills in the background. The environment asked for at claim
time is added to every command's (the sandbox's processes were started
before it was known). Hits and misses are counted per pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from corral.core.clock import utcnow
from corral.errors import CorralError, InvalidRequest
from corral.images.store import canonical
from corral.net.policy import parse_published
from corral.store.models import PoolRow, SandboxRow

if TYPE_CHECKING:
    from corral.core.sandboxes import CreateRequest, SandboxManager
    from corral.core.templates import TemplateService

log = logging.getLogger(__name__)

POOLED = "pooled"
MAX_POOL_SIZE = 64
RETRY_DELAY = 5.0
MAX_FAILURES = 5
"""Failed starts in a row after which a pool stops trying (until its size is set again)."""
REFILL_DELAY = 1.0
"""After a claim, the refill waits this long: the claimant's first commands get the CPU first."""


def pool_key(*, image: str | None = None, template: str | None = None) -> str:
    if (image is None) == (template is None):
        raise InvalidRequest("a pool is for exactly one image or one template")
    return f"template:{template}" if template is not None else f"image:{canonical(image or '')}"


class Pools:
    def __init__(self, manager: SandboxManager, templates: TemplateService) -> None:
        self.manager = manager
        self.store = manager.store
        self.templates = templates
        self._filling: dict[str, asyncio.Task[None]] = {}
        self.errors: dict[str, str] = {}
        """Why a pool's last try to start a sandbox failed; gone once one starts (or its size is set again)."""
        manager.exits.pool_lost.append(self.refill)

    def start(self) -> None:
        for pool in self.store.list_pools():
            self.refill(pool.key)

    async def aclose(self) -> None:
        for task in self._filling.values():
            task.cancel()
        for task in self._filling.values():
            with contextlib.suppress(BaseException):
                await task

    # -- configuration -----------------------------------------------------------

    def set_size(self, key: str, size: int) -> PoolRow:
        if not 0 <= size <= MAX_POOL_SIZE:
            raise InvalidRequest(f"a pool's size must be between 0 and {MAX_POOL_SIZE}, got {size}")
        kind, _, name = key.partition(":")
        if kind == "template":
            self.templates.get(name)  # raises TemplateNotFound
        elif kind != "image":
            raise InvalidRequest(f"'{key}' is not a pool key (image:<name> or template:<name>)")
        row = self.store.put_pool(key, size)
        self.errors.pop(key, None)  # tried afresh
        self.refill(key)
        return row

    def waiting(self, key: str) -> list[SandboxRow]:
        return [r for r in self.store.list_sandboxes(states={POOLED}) if r.pool == key]

    def delete(self, key: str) -> None:
        self.store.put_pool(key, 0)
        self.refill(key)
        self.store.delete_pool(key)
        self.errors.pop(key, None)

    # -- claiming ----------------------------------------------------------------

    def key_for(self, request: CreateRequest) -> str:
        if request.template is not None:
            return pool_key(template=request.template)
        return pool_key(image=request.image or self.manager.settings.default_image)

    async def claim(self, request: CreateRequest) -> SandboxRow | None:
        """A pooled sandbox made into what ``request`` asks for, or None (then create as usual)."""
        key = self.key_for(request)
        if self.store.get_pool(key) is None:
            return None
        waiting = self.waiting(key)
        fits = [r for r in waiting if _fits(r, request)]
        if not fits:
            self.store.count_pool(key, hit=False)
            self.refill(key)
            return None
        row = fits[0]
        s = self.manager.settings
        timeout = s.default_timeout if request.timeout is None else request.timeout
        if not 0 <= timeout <= s.max_timeout:
            raise InvalidRequest(f"timeout must be between 0 and {s.max_timeout}, got {timeout}")
        policy = self.manager.network.resolve_policy(request.network)
        publish = [parse_published(p) for p in request.publish]
        now = utcnow()
        claimed = self.store.update_sandbox(
            row.id,
            state="running",
            pool=None,
            meta=dict(request.metadata),
            envs={**row.envs, **request.envs},
            timeout=timeout,
            created_at=now,
            ends_at=now + timedelta(seconds=timeout) if timeout else None,
            on_timeout=request.on_timeout,
            auto_pause=request.auto_pause,
            network=policy.to_json(),
            ports=[p.to_json() for p in publish],
            auto_publish=request.auto_publish,
        )
        assert claimed is not None
        try:
            if claimed.network != row.network:  # else its policy is in force since it started
                await self.manager.network.attach(claimed)
            await self.manager.ports.open(claimed)
        except BaseException:
            await self.manager.kill(row.id)  # half-claimed: neither the pool's nor the caller's
            raise
        self.store.count_pool(key, hit=True)
        self.manager.lifecycle.touch(row.id)
        self.refill(key, delay=REFILL_DELAY)
        log.info("sandbox %s claimed from pool %s", row.id, key)
        return claimed

    # -- filling -----------------------------------------------------------------

    def refill(self, key: str, *, delay: float = 0.0) -> None:
        task = self._filling.get(key)
        if task is None or task.done():
            self._filling[key] = asyncio.create_task(self._fill(key, delay), name=f"corral-pool-{key}")

    async def _fill(self, key: str, delay: float) -> None:
        from corral.core.sandboxes import CreateRequest

        await asyncio.sleep(delay)
        failures = 0
        while True:
            pool = self.store.get_pool(key)
            want = pool.size if pool else 0
            waiting = self.waiting(key)
            for extra in waiting[want:]:
                with contextlib.suppress(CorralError):
                    await self.manager.kill(extra.id)
            if len(waiting) >= want:
                return
            kind, _, name = key.partition(":")
            request = CreateRequest(timeout=0, metadata={"corral.pool": key})
            try:
                if kind == "template":
                    row = await self.templates.spawn(CreateRequest(template=name, timeout=0, metadata=request.metadata))
                else:
                    row = await self.manager.create(CreateRequest(image=name, timeout=0, metadata=request.metadata))
            except CorralError as exc:
                failures += 1
                log.warning("pool %s could not start a sandbox (%s); retrying in %gs", key, exc.message, RETRY_DELAY)
                self.errors[key] = exc.message
                if failures >= MAX_FAILURES:
                    log.error("pool %s gives up after %d failures", key, failures)
                    self.errors[key] = f"{exc.message} (gave up after {failures} tries; set its size again to retry)"
                    return
                await asyncio.sleep(RETRY_DELAY)
                continue
            self.errors.pop(key, None)
            with contextlib.suppress(CorralError):
                await self._warm_up(row.id)
            self.store.update_sandbox(row.id, state=POOLED, pool=key)

    async def _warm_up(self, sandbox_id: str) -> None:
        """Make the claimant's first command as quick as any later one: the shell is found and run once."""
        from corral.core import commands

        agent = self.manager.agent(sandbox_id)
        shell = await self.manager.shell(sandbox_id)
        await commands.run(agent, commands.ExecRequest(cmd="true", timeout=30), shell)


def _fits(row: SandboxRow, request: CreateRequest) -> bool:
    """Pooled sandboxes have the pool's resources; a request for others cannot use them."""
    return (
        (request.vcpus is None or request.vcpus == row.vcpus)
        and (request.memory_mb is None or request.memory_mb == row.memory_mb)
        and (request.disk_mb is None or request.disk_mb == row.disk_mb)
    )
