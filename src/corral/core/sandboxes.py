"""The orchestrator: sandboxes' lifecycle, from create to kill, across restarts.

The store is the source of truth for what *should* exist; the runtime says
what *does*. On start the manager reconciles the two: sandboxes the runtime
still runs are taken back as they are (their processes and files untouched),
those it lost are shown as ``dead``, and creates a crash cut short are undone.

States (``SandboxRow.state``):

- ``starting``: recorded, being built; never handed out.
- ``running``: its agent answered; usable.
- ``dead``: the runtime stopped it on its own (crash, host reboot, killed
  from outside); ``error`` says what was seen. Only ``kill`` applies.

Killing deletes the row: a killed sandbox no longer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import ssl
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from corral.config import Settings
from corral.core.agent_client import CONNECT_TIMEOUT, AgentClient
from corral.core.boot_snapshots import BootSnapshots, Shape, Started
from corral.core.clock import as_utc, utcnow
from corral.core.exits import ExitWatch
from corral.core.images import ImageService
from corral.core.lifecycle import HIBERNATED, PAUSED, Lifecycle
from corral.core.network import Network
from corral.core.pools import POOLED
from corral.core.ports import PublishedPorts
from corral.core.previews import Previews
from corral.core.spare_links import SpareLinks
from corral.errors import (
    AgentUnavailable,
    Conflict,
    CorralError,
    Interrupted,
    InvalidRequest,
    RuntimeFailure,
    SandboxNotFound,
    SandboxNotRunning,
)
from corral.images.store import Image, ImageConfig, ImageStore, canonical
from corral.net import links, tcp
from corral.net.policy import EgressPolicy, Published, parse_published
from corral.runtimes.base import AGENT_PORT, NetworkSpec, Runtime, RuntimeHandle, RuntimeState, SandboxSpec
from corral.store.db import Store
from corral.store.models import SandboxRow

log = logging.getLogger(__name__)


def _unverified_tls() -> ssl.SSLContext:
    """The one TLS context of every client to an agent.

    Agents speak plain HTTP over the sandbox's own link, so it is never used;
    but httpx makes a context for each client not given one: 1 ms of every create.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_AGENT_TLS = _unverified_tls()

STARTING, RUNNING, DEAD = "starting", "running", "dead"
CLOSE_GRACE = 0.2
"""Most seconds given to an agent to close its side of the connections dropped before a checkpoint."""
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_sandbox_id() -> str:
    return "sb" + new_id_suffix()


def new_id_suffix() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


@dataclass(slots=True)
class CreateRequest:
    image: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    timeout: int | None = None
    envs: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    on_timeout: str = "kill"
    auto_pause: int | None = None
    network: dict[str, Any] | None = None
    """Its egress policy (see :mod:`corral.net.policy`); None: the server's default."""
    publish: list[dict[str, int]] = field(default_factory=list)
    """Host ports to publish: ``{"host_port": 8080, "port": 3000}``."""
    auto_publish: bool = False


class SandboxManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        images: ImageStore,
        *,
        network: Network | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.network = network or Network(settings, enabled=False)
        self.ports = PublishedPorts(self)
        self.previews = Previews(self)
        self.images = ImageService(settings, images, in_use=self.images_in_use)
        # One HTTP client per sandbox, so that its connections can be dropped before a
        # checkpoint (see drop_agent_connections) without touching other sandboxes'.
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._sealed: set[str] = set()
        """Sandboxes being checkpointed: no new connection to their agents (see :meth:`sealed`)."""
        self._agents: dict[str, AgentClient] = {}
        self._shells: dict[str, list[str]] = {}
        self._image_shells: dict[str, list[str]] = {}
        """The shell found in a sandbox of each image (by id): the next sandbox of it asks its agent no more."""
        self._reaper: asyncio.Task[None] | None = None
        self._teardowns: set[asyncio.Task[None]] = set()
        self._reserved_slots: set[int] = set()
        """Addresses no new sandbox may take: links being torn down, hidden sandboxes booting for boot snapshots."""
        # Boots are CPU-bound (the agent's start inside gVisor): past a few at once they only
        # slow each other down until all miss start_timeout, so the rest wait their turn.
        self.start_slots = settings.max_concurrent_starts or 2 * (os.cpu_count() or 1)
        self._booting = asyncio.Semaphore(self.start_slots)
        self.lifecycle = Lifecycle(self)
        self.exits = ExitWatch(self)
        self.boot_snapshots = BootSnapshots(self)
        self.spare_links = SpareLinks(self, settings.spare_links)

    # -- lifecycle of the manager ----------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.images.start)
        interrupted = self.lifecycle.start()
        await self.reconcile(interrupted=interrupted)
        await self.network.start(self.store.list_sandboxes())
        await self.ports.start()
        if self.network.enabled:
            await self.previews.start()
        await self.spare_links.start()
        await self.boot_snapshots.start()
        self._want_default_boot_snapshot()
        self._reaper = asyncio.create_task(self._reap_forever(), name="corral-reaper")

    async def aclose(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self.exits.close()
        await self.boot_snapshots.aclose()
        await self.spare_links.aclose()
        if self._teardowns:
            await asyncio.wait(self._teardowns, timeout=30)
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()
        await self.previews.aclose()
        await self.ports.aclose()
        await self.network.aclose()
        await self.runtime.aclose()

    async def reconcile(self, *, interrupted: Collection[str] = ()) -> None:
        """Match the store to what the runtime really runs (at server start).

        ``interrupted``: sandboxes a crash caught in a snapshot or fork. Their checkpoint
        froze them; one the store has as running is thawed, not taken for paused.
        """
        rows = self.store.list_sandboxes()
        for orphan in await self.runtime.leftovers({row.id for row in rows}):
            # Killed (or never acknowledged) before a crash cut its teardown short.
            log.info("removing leftovers of sandbox %s", orphan.sandbox_id)
            await self.runtime.destroy(orphan)
        for row in rows:
            handle = _handle(row)
            if row.state == STARTING:
                log.warning("sandbox %s was still starting when the server stopped; removing it", row.id)
                await self.runtime.destroy(handle)
                self.store.delete_sandbox(row.id)
            elif row.state == POOLED:
                if await self.runtime.state(handle) is not RuntimeState.RUNNING:
                    await self.runtime.destroy(handle)  # its pool starts another
                    self.store.delete_sandbox(row.id)
            elif row.state in (RUNNING, PAUSED, HIBERNATED):
                seen = await self.runtime.state(handle)
                expected = {RUNNING: RuntimeState.RUNNING, PAUSED: RuntimeState.PAUSED}.get(row.state)
                if seen.value == row.state or seen is expected:
                    continue
                if row.state == RUNNING and seen is RuntimeState.PAUSED and row.id in interrupted:
                    log.warning("sandbox %s was frozen by a snapshot the server did not finish; thawing it", row.id)
                    with contextlib.suppress(RuntimeFailure):
                        await self.runtime.resume(handle)
                    seen = await self.runtime.state(handle)
                    if seen is RuntimeState.RUNNING:
                        continue
                if seen is RuntimeState.HIBERNATED or (seen is RuntimeState.RUNNING and row.state == PAUSED):
                    # A crash came between the runtime's change and the store's: the runtime is right.
                    self.store.update_sandbox(row.id, state=seen.value)
                else:
                    self.mark_dead(row.id, f"the runtime reports it {seen.value} (seen at server start)")

    # -- operations --------------------------------------------------------------

    async def create(
        self,
        request: CreateRequest,
        *,
        image: Image | None = None,
        image_label: str | None = None,
        start: Callable[[SandboxSpec], Awaitable[RuntimeHandle]] | None = None,
        boots: bool = True,
        boot_snapshot: bool = True,
        started: Started | None = None,
    ) -> SandboxRow:
        """Start a sandbox on ``request.image`` (pulled if need be), or on ``image`` as given.

        ``start`` replaces the runtime's ``create`` (a restore from a snapshot does).
        Only a sandbox that ``boots`` waits for a boot slot: a snapshot's restore
        or a fork's copy brings its running agent along, and ten of them side by
        side take about as long as ten raw restores.

        A sandbox that would boot is restored from its image and shape's boot
        snapshot instead, if there is one (:mod:`corral.core.boot_snapshots`),
        in a boot slot all the same (a burst of them thrashes the CPU as boots
        do); if there is none, it boots and, with ``boot_snapshot``, has one
        made behind it for the next create. With ``started`` (a template's
        service), a booted sandbox runs it before it is handed out, and the boot
        snapshot is taken with it running.
        """
        if request.on_timeout not in ("kill", "pause"):
            raise InvalidRequest(f"on_timeout must be 'kill' or 'pause', got {request.on_timeout!r}")
        if request.auto_pause is not None and request.auto_pause < 1:
            raise InvalidRequest("auto_pause must be at least 1 second (or absent: never)")
        if image is None:
            image = await self.images.get_or_pull(request.image or self.settings.default_image)
        plan = self._plan(request, image, image_label, started=started.key if started else "")
        if start is not None or not boots:
            return await self._launch(plan, start, boots=boots)
        if not any(k.startswith(AGENT_SETTINGS) for k in request.envs):  # those are read at boot
            with self.boot_snapshots.restoring(plan.shape) as saved:
                if saved is not None and (made := await self._restore_boot_snapshot(plan, saved)) is not None:
                    return made
            if boot_snapshot:
                self.boot_snapshots.want(plan.shape, plan.spec("", _NO_NETWORK, envs={}), plan.label, started)
        row = await self._launch(plan, None, boots=True)
        if started is not None:
            try:
                await started.run(self.agent(row.id), await self.shell(row.id))
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.kill(row.id)
                raise
        return row

    def _plan(self, request: CreateRequest, image: Image, image_label: str | None, *, started: str = "") -> _Plan:
        s = self.settings
        vcpus = request.vcpus or s.default_vcpus
        memory_mb = request.memory_mb or s.default_memory_mb
        timeout = s.default_timeout if request.timeout is None else request.timeout
        _check_range("vcpus", vcpus, 1, s.max_vcpus)
        _check_range("memory_mb", memory_mb, 64, s.max_memory_mb)
        if request.disk_mb is not None:
            _check_range("disk_mb", request.disk_mb, 16, s.max_disk_mb)
        _check_range("timeout", timeout, 0, s.max_timeout)
        return _Plan(
            request=request,
            image=image,
            label=image_label or (image.names[0] if image.names else (request.image or s.default_image)),
            layers=tuple(self.images.store.layer_paths(image)),
            shape=Shape(image.id, vcpus, memory_mb, pids_limit(s.pids_limit, memory_mb), started),
            disk_mb=request.disk_mb or s.default_disk_mb or None,
            timeout=timeout,
            policy=self.network.resolve_policy(request.network),
            publish=[parse_published(p) for p in request.publish],
        )

    def _want_default_boot_snapshot(self) -> None:
        """The default image's default shape gets its boot snapshot at start: the first creates need not boot."""
        image = self.images.store.lookup(self.settings.default_image)
        if image is not None and self.boot_snapshots.enabled:
            plan = self._plan(CreateRequest(), image, None)
            self.boot_snapshots.want(plan.shape, plan.spec("", _NO_NETWORK, envs={}), plan.label)

    async def _restore_boot_snapshot(self, plan: _Plan, saved: Path) -> SandboxRow | None:
        """Restore the booted sandbox saved in ``saved``; should runsc fail on it, it is dropped (None)."""
        restore_failed: list[RuntimeFailure] = []

        async def restore(spec: SandboxSpec) -> RuntimeHandle:
            try:
                return await self.runtime.restore(spec, saved)
            except RuntimeFailure as exc:
                restore_failed.append(exc)
                raise

        try:
            # It takes a boot slot as a boot does: restores at once thrash the CPU as boots do.
            return await self._launch(plan, restore, boots=True, how=", from its boot snapshot")
        except RuntimeFailure:
            if not restore_failed:
                raise
        self.boot_snapshots.discard(plan.shape, restore_failed[0].message)
        return None

    async def _launch(
        self,
        plan: _Plan,
        start: Callable[[SandboxSpec], Awaitable[RuntimeHandle]] | None,
        *,
        boots: bool,
        how: str = "",
    ) -> SandboxRow:
        """Record the sandbox, build and start it, wait for its agent; on failure nothing is left of it."""
        request, shape = plan.request, plan.shape
        sandbox_id = new_sandbox_id()
        slot = self.spare_links.take()  # recorded below with no await before: no other create gets it
        network = links.network_for_slot(self.settings.sandbox_subnet, self._free_slot() if slot is None else slot)
        now = utcnow()
        row = self.store.add_sandbox(
            SandboxRow(
                id=sandbox_id,
                image=plan.label,
                image_id=plan.image.id,
                template=request.template,
                on_timeout=request.on_timeout,
                auto_pause=request.auto_pause,
                runtime=self.runtime.name,
                state=STARTING,
                vcpus=shape.vcpus,
                memory_mb=shape.memory_mb,
                disk_mb=plan.disk_mb,
                envs=dict(request.envs),
                meta=dict(request.metadata),
                timeout=plan.timeout,
                created_at=now,
                ends_at=now + timedelta(seconds=plan.timeout) if plan.timeout else None,
                slot=network.slot,
                address=network.sandbox_address,
                agent_url="",
                network=plan.policy.to_json(),
                ports=[p.to_json() for p in plan.publish],
                auto_publish=request.auto_publish,
                # Enough for a restarted server to tear down a half-made sandbox.
                runtime_info={
                    "slot": network.slot,
                    "host_address": network.host_address,
                    "sandbox_address": network.sandbox_address,
                },
            )
        )
        spec = plan.spec(sandbox_id, network, envs=request.envs)
        # The policy loads while the runtime builds: until it is in, the firewall drops
        # every packet the sandbox starts (an address it does not know), so none leaves unfiltered.
        attached = asyncio.create_task(self.network.attach(row))
        handle: RuntimeHandle | None = None
        try:
            boot_slot = self.booting(sandbox_id) if boots else contextlib.nullcontext()
            async with self.runtime.activity.making(), boot_slot:
                handle = await (start or self.runtime.create)(spec)
                started = time.perf_counter()
                await self.wait_for_agent(handle)
                log.debug("sandbox %s: agent answered in %.1f ms", sandbox_id, 1000 * (time.perf_counter() - started))
            await attached
            # One write: until it, the row (starting) holds enough to undo the sandbox after a crash.
            updated = self.store.update_sandbox(
                sandbox_id, state=RUNNING, agent_url=handle.agent_url, runtime_info=handle.info
            )
            assert updated is not None
            await self.ports.open(updated)
        except BaseException as exc:
            log.warning("sandbox %s did not start (%s); removing it", sandbox_id, getattr(exc, "message", repr(exc)))
            if not attached.done():
                attached.cancel()
            with contextlib.suppress(BaseException):
                await attached
            row_now = self.store.get_sandbox(sandbox_id)
            self.exits.killing(sandbox_id)
            await self.runtime.destroy(handle or _handle(row_now or row))
            await self.network.detach(row_now or row)
            self.store.delete_sandbox(sandbox_id)
            raise
        log.info(
            "sandbox %s running (%s, %d vCPU, %d MiB%s)", sandbox_id, updated.image, shape.vcpus, shape.memory_mb, how
        )
        return updated

    def booting(self, sandbox_id: str = "") -> contextlib.AbstractAsyncContextManager[Any]:
        """A boot slot, held from the runtime's start until the agent answers."""
        if self._booting.locked():
            log.info("sandbox %s waits for one of %d boots under way to end", sandbox_id, self.start_slots)
        return self._booting

    def get(self, sandbox_id: str) -> SandboxRow:
        row = self.store.get_sandbox(sandbox_id)
        if row is None:
            raise SandboxNotFound(f"no sandbox '{sandbox_id}' exists", details={"sandbox_id": sandbox_id})
        return row

    def list_sandboxes(
        self,
        *,
        states: set[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int | None = None,
    ) -> list[SandboxRow]:
        return self.store.list_sandboxes(states=states, metadata=metadata, after=after, limit=limit)

    async def kill(self, sandbox_id: str) -> None:
        """Stop it now; its disk and namespaces are removed in the background.

        The slot stays reserved until then, so no new sandbox gets its address
        while the old link still exists. Should the server die meanwhile, the
        leftovers are found and removed at the next start (:meth:`reconcile`).
        """
        row = self.get(sandbox_id)
        handle = _handle(row)
        self.exits.killing(sandbox_id)  # its process ends now on purpose
        await self.runtime.stop(handle)
        await self.ports.close(sandbox_id)
        self._reserved_slots.add(row.slot)
        self.store.delete_sandbox(sandbox_id)
        self.forget_agent(sandbox_id)
        self.lifecycle.forget(sandbox_id)
        self.in_background(self._teardown(handle, row), name=f"corral-teardown-{sandbox_id}")
        log.info("sandbox %s killed", sandbox_id)

    async def _teardown(self, handle: RuntimeHandle, row: SandboxRow) -> None:
        try:
            await self.runtime.destroy(handle)
            await self.network.detach(row)  # before its address can be someone else's
        except Exception:
            log.exception("teardown of sandbox %s failed; it is retried at the next start", handle.sandbox_id)
        finally:
            self._reserved_slots.discard(row.slot)

    async def set_network(self, sandbox_id: str, network: dict[str, Any]) -> SandboxRow:
        """Replace a sandbox's egress policy; it holds from the next packet on."""
        self.get(sandbox_id)
        policy = self.network.resolve_policy(network)
        row = self.store.update_sandbox(sandbox_id, network=policy.to_json())
        assert row is not None
        await self.network.attach(row)
        log.info("sandbox %s: egress policy now %s", sandbox_id, policy.mode)
        return row

    def set_timeout(self, sandbox_id: str, timeout: int) -> SandboxRow:
        current = self.get(sandbox_id)
        _check_range("timeout", timeout, 0, self.settings.max_timeout)
        if current.state in (PAUSED, HIBERNATED) and not self.settings.paused_time_counts:
            # Its clock is stopped: the new timeout runs from when it is back.
            row = self.store.update_sandbox(sandbox_id, timeout=timeout, remaining=float(timeout) if timeout else None)
            assert row is not None
            return row
        ends_at = utcnow() + timedelta(seconds=timeout) if timeout else None
        row = self.store.update_sandbox(sandbox_id, timeout=timeout, ends_at=ends_at)
        assert row is not None
        return row

    async def logs(self, sandbox_id: str, *, tail: int | None = None) -> str:
        return await self.runtime.logs(_handle(self.get(sandbox_id)), tail=tail)

    async def commit(self, sandbox_id: str, name: str) -> Image:
        """Save what the sandbox wrote over its image as a new image called ``name``."""
        row = self.get(sandbox_id)
        canonical(name)  # a bad name fails before any copying
        if not row.image_id or not self.images.store.has(row.image_id):
            raise Conflict(f"sandbox '{sandbox_id}''s image is gone from the store; it cannot be committed")
        base = self.images.store.get(row.image_id)
        work = self.images.store.work_dir("commit")
        try:
            layer = work / "layer"
            layer.mkdir()
            await self.runtime.export_changes(_handle(row), layer)
            image = self.images.store.stack(layer, parent=base, source="commit", names=(name,))
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("sandbox %s committed as %s (%s)", sandbox_id, name, image.id[:12])
        return image

    def runtime_handle(self, sandbox_id: str) -> RuntimeHandle:
        return _handle(self.get(sandbox_id))

    @staticmethod
    def handle_of(row: SandboxRow) -> RuntimeHandle:
        return _handle(row)

    async def awake_agent(self, sandbox_id: str) -> AgentClient:
        """The agent of a sandbox, thawed or woken first if it is paused or hibernated."""
        return (await self.awake(sandbox_id))[1]

    async def awake(self, sandbox_id: str) -> tuple[SandboxRow, AgentClient]:
        """:meth:`awake_agent`, with the sandbox's row read on the way (one store read in all)."""
        row = await self.lifecycle.ensure_awake(sandbox_id)
        return row, self._agent_of(row)

    def in_use(self, sandbox_id: str) -> bool:
        """Whether a command's output is being read from the sandbox right now."""
        client = self._agents.get(sandbox_id)
        return client is not None and client.streams > 0

    def agent(self, sandbox_id: str) -> AgentClient:
        """The agent of a running sandbox; raises if it is not running."""
        return self._agent_of(self.get(sandbox_id))

    def _agent_of(self, row: SandboxRow) -> AgentClient:
        sandbox_id = row.id
        if row.state != RUNNING:
            raise _not_running(row)
        client = self._agents.get(sandbox_id)
        if client is None:
            client = self._agents[sandbox_id] = AgentClient(row.agent_url, http=self.http_for(sandbox_id))
        return client

    async def shell(self, sandbox_id: str) -> list[str]:
        """How to run a command line in this sandbox: bash if its image has it, else sh.

        Asked of one sandbox of each image (a ``stat`` through its agent, 10-15 ms
        in gVisor); its later sandboxes take that answer on their first command.
        """
        shell = self._shells.get(sandbox_id)
        if shell is None:
            shell = await self.image_shell(self.agent(sandbox_id), self.get(sandbox_id).image_id or "")
            self._shells[sandbox_id] = shell
        return shell

    async def image_shell(self, agent: AgentClient, image_id: str) -> list[str]:
        """The shell of sandboxes of ``image_id``, asked of ``agent`` if no sandbox of it answered yet."""
        shell = self._image_shells.get(image_id)
        if shell is None:
            try:
                await agent.stat("/bin/bash", user="root")
                shell = ["/bin/bash", "-c"]
            except LookupError:
                shell = ["/bin/sh", "-c"]
            if image_id:
                self._image_shells[image_id] = shell
        return shell

    def inherit_shell(self, sandbox_id: str, source_id: str) -> None:
        """A copy of ``source_id`` (restored from its memory and files) runs lines with its shell, if that is known."""
        shell = self._shells.get(source_id)
        if shell is not None:
            self._shells.setdefault(sandbox_id, shell)

    async def call_failed(self, sandbox_id: str, exc: CorralError) -> CorralError:
        """The error to answer for a call that failed with ``exc``: one that lost its agent is judged here.

        A call loses its agent when the agent stops answering (``agent_unavailable``)
        or its connection is dropped (``interrupted``).

        A pause, hibernate or checkpoint under way freezes the agent: its sandbox is
        judged once that is over, and only a sandbox that no longer runs at all is dead.
        A dead sandbox's answer is the one every later call gets, ``sandbox_not_running``
        (its connections are dropped when it is found dead: that is no checkpoint). A
        killed one's is ``sandbox_not_found``, saying it was killed.
        """
        if not isinstance(exc, AgentUnavailable | Interrupted):
            return exc
        if self.exits.was_killed(sandbox_id):
            return _killed(sandbox_id)
        await self.lifecycle.settled(sandbox_id)
        row = self.store.get_sandbox(sandbox_id)
        if row is None:
            return _killed(sandbox_id)
        if row.state == DEAD:
            return _not_running(row)
        if row.state != RUNNING or not isinstance(exc, AgentUnavailable):
            return exc
        seen = await self.runtime.state(_handle(row))
        if seen not in (RuntimeState.STOPPED, RuntimeState.MISSING):
            return exc
        self.mark_dead(sandbox_id, f"the runtime reports it {seen.value} ({exc.message})")
        return _not_running(self.get(sandbox_id))

    def images_in_use(self) -> dict[str, list[str]]:
        """Image ids that sandboxes run on, each with those sandboxes' ids."""
        used: dict[str, list[str]] = {}
        for row in self.store.list_sandboxes():
            if row.image_id:
                used.setdefault(row.image_id, []).append(row.id)
        return used

    # -- internals ---------------------------------------------------------------

    def _free_slot(self) -> int:
        used = self.store.used_slots() | self._reserved_slots
        for slot in range(links.slot_count(self.settings.sandbox_subnet)):
            if slot not in used:
                return slot
        raise RuntimeFailure(f"no free addresses left in {self.settings.sandbox_subnet}")

    def reserve_slot(self) -> int:
        """An address for a sandbox the store does not list (a boot snapshot's); :meth:`release_slot` after."""
        slot = self._free_slot()
        self._reserved_slots.add(slot)
        return slot

    def release_slot(self, slot: int) -> None:
        self._reserved_slots.discard(slot)

    @staticmethod
    def new_id_suffix() -> str:
        return new_id_suffix()

    async def wait_for_agent(self, handle: RuntimeHandle) -> None:
        agent = AgentClient(handle.agent_url, http=self.http_for(handle.sandbox_id))
        deadline = time.monotonic() + self.settings.start_timeout
        delay = 0.002
        while time.monotonic() < deadline:
            if await agent.health():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        console = await self.runtime.logs(handle, tail=20)
        raise RuntimeFailure(
            f"sandbox {handle.sandbox_id}'s agent did not answer within {self.settings.start_timeout:g}s",
            details={"console": console},
        )

    def mark_dead(self, sandbox_id: str, error: str) -> None:
        log.warning("sandbox %s is dead: %s", sandbox_id, error)
        self.store.update_sandbox(sandbox_id, state=DEAD, error=error)
        self.forget_agent(sandbox_id)

    def forget_agent(self, sandbox_id: str) -> None:
        self._agents.pop(sandbox_id, None)
        self._shells.pop(sandbox_id, None)
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            self.in_background(client.aclose(), name=f"corral-close-{sandbox_id}")

    def in_background(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run ``work`` after the answer, off the caller's way; the manager's close waits for it (30 s at most)."""
        task = asyncio.create_task(work, name=name)
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    def has_agent_connections(self, sandbox_id: str) -> bool:
        """Whether the server may hold connections to the sandbox's agent (its client was made and not dropped)."""
        return sandbox_id in self._clients

    @contextlib.asynccontextmanager
    async def sealed(self, sandbox_id: str, *, address: str | None = None) -> AsyncIterator[None]:
        """For a checkpoint of the sandbox: its agent's connections closed, and no new one until it is over.

        A call that would open one meanwhile is ``Interrupted`` at once (it may be made
        again): a connection the checkpoint saved would be reset in the restored
        copy, whose agent was seen to spin on it (see :meth:`drop_agent_connections`).
        """
        self._sealed.add(sandbox_id)
        try:
            await self.drop_agent_connections(sandbox_id, address=address)
            yield
        finally:
            self._sealed.discard(sandbox_id)

    async def drop_agent_connections(self, sandbox_id: str, *, address: str | None = None) -> None:
        """Close every connection to the sandbox's agent (streams through it end).

        A checkpoint resets open TCP connections (``--net-disconnect-ok``), and an
        agent restored with such a connection was seen to spin on its dead socket
        and never answer again; with none open, restores come back.
        """
        self._agents.pop(sandbox_id, None)
        client = self._clients.pop(sandbox_id, None)
        if client is not None:
            await client.aclose()
            # Until the agent has closed its side too (a few ms), CLOSE_GRACE at most.
            if address is None:
                row = self.store.get_sandbox(sandbox_id)
                address = row.address if row is not None else None
            if not address:
                await asyncio.sleep(CLOSE_GRACE)
            elif not await tcp.closed_by_peer(address, AGENT_PORT, timeout=CLOSE_GRACE):
                log.debug("sandbox %s: its agent kept connections open past %.1fs", sandbox_id, CLOSE_GRACE)

    def http_for(self, sandbox_id: str) -> httpx.AsyncClient:
        if sandbox_id in self._sealed:
            raise Interrupted(
                f"sandbox '{sandbox_id}' is being checkpointed (a snapshot, fork or hibernate): make the call again"
            )
        client = self._clients.get(sandbox_id)
        if client is None:
            client = self._clients[sandbox_id] = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT),
                # No cap: every command followed (a background one's stream) holds a connection
                # for as long as it runs, and a capped pool made the next call wait for ever.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
                trust_env=False,
                verify=_AGENT_TLS,
            )
        return client

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval)
            try:
                await self.reap()
            except Exception:
                log.exception("reaper round failed")

    async def reap(self) -> None:
        """End every sandbox whose time is up (kill, or pause with ``on_timeout: pause``); hibernate idle ones."""
        self.exits.sweep()
        now = utcnow()
        for row in self.store.list_sandboxes(states={RUNNING, DEAD, PAUSED, HIBERNATED}):
            if row.ends_at is None or as_utc(row.ends_at) > now:
                continue
            log.info("sandbox %s reached its timeout", row.id)
            with contextlib.suppress(CorralError):
                if row.on_timeout == "pause" and row.state == RUNNING:
                    await self.lifecycle.pause(row.id, fresh_timeout=True)
                elif row.on_timeout == "pause" and row.state in (PAUSED, HIBERNATED):
                    self.store.update_sandbox(row.id, ends_at=None, remaining=float(row.timeout))
                else:
                    await self.kill(row.id)
        await self.lifecycle.reap_idle()


AGENT_SETTINGS = "CORRAL_AGENT_"
"""Variables the agent reads when it boots (:mod:`corral.agent.main`)."""
_NO_NETWORK = NetworkSpec(slot=-1, host_address="", sandbox_address="")


@dataclass(frozen=True, slots=True)
class _Plan:
    """A create request checked and resolved: what any sandbox made for it is made of."""

    request: CreateRequest
    image: Image
    label: str
    layers: tuple[Path, ...]
    shape: Shape
    disk_mb: int | None
    timeout: int
    policy: EgressPolicy
    publish: list[Published]

    def spec(self, sandbox_id: str, network: NetworkSpec, *, envs: Mapping[str, str]) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=sandbox_id,
            image_layers=self.layers,
            network=network,
            vcpus=self.shape.vcpus,
            memory_mb=self.shape.memory_mb,
            disk_mb=self.disk_mb,
            pids_limit=self.shape.pids_limit,
            envs=sandbox_env(self.image.config, envs),
        )


def pids_limit(configured: int, memory_mb: int) -> int:
    """Processes one sandbox may have: the configured cap, but at most one per MiB (at least 256).

    Every process costs memory (a forked shell dirties about half a MiB), so a
    small sandbox with many processes would outgrow its memory faster than its
    OOM killer, starved by those very processes, could act.
    """
    return min(configured, max(256, memory_mb))


def sandbox_env(config: ImageConfig, requested: Mapping[str, str]) -> dict[str, str]:
    """The environment of a sandbox's processes: the image's, then the request's on top.

    The image's ``User`` becomes the default user of commands and file calls, its
    ``WorkingDir`` where commands start.
    """
    env = {**config.env, **requested}
    if config.user:
        env["CORRAL_AGENT_USER"] = config.user  # a name or uid, maybe with ":group", as Docker reads it
    if config.workdir:
        env["CORRAL_AGENT_WORKDIR"] = config.workdir
    return env


def _not_running(row: SandboxRow) -> SandboxNotRunning:
    return SandboxNotRunning(
        f"sandbox '{row.id}' is {row.state}" + (f": {row.error}" if row.error else ""),
        details={"sandbox_id": row.id, "state": row.state},
    )


def _killed(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(f"sandbox '{sandbox_id}' was killed while the call ran", details={"sandbox_id": sandbox_id})


def _handle(row: SandboxRow) -> RuntimeHandle:
    return RuntimeHandle(sandbox_id=row.id, agent_url=row.agent_url, info=dict(row.runtime_info or {}))


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidRequest(
            f"{name} must be between {low} and {high}, got {value}",
            details={"field": name, "value": value},
        )
