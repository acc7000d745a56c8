"""Boot snapshots: one booted sandbox saved per image and shape, restored by every create of it.

A sandbox that boots starts its agent, a Python program, from nothing inside
gVisor: 250-400 ms of CPU, most of a create's time. A restored sandbox brings
its agent back running. So for each image and shape (vCPUs, memory) that
creates ask for, corral boots one hidden sandbox, runs one command in it as
its default user (so the paths a first command takes are warm), checkpoints
it into ``<data_dir>/boot-snapshots/<key>/`` and removes it. Later creates of
that image and shape restore the checkpoint under their own id, address,
disk and egress policy, as a fork's copies do. The environment a create asks
for reaches every command through the server, as a pooled sandbox's does.

The key names everything the saved machine depends on: the image's id, the
shape, and the runtime's :meth:`~corral.runtimes.base.Runtime.checkpoint_identity`
(the runsc binary, its platform, the agent bundle), so a new runsc or a new
agent never restores an old one. A create that finds no boot snapshot boots,
and has one made behind it, one at a time, in the background. At most
``CORRAL_BOOT_SNAPSHOTS`` are kept, the least recently used removed first;
one whose restore fails is removed and the create boots instead.

What sandboxes of one boot snapshot share is described in docs/security.md:
the agent's own memory (its heap layout, Python's hash seed) and gVisor's
network stack's seeds. The commands they run are new processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.core import commands
from corral.core.agent_client import AgentClient
from corral.errors import CorralError
from corral.images.store import tree_size
from corral.net import links
from corral.runtimes.base import NetworkSpec, RuntimeHandle, SandboxSpec

if TYPE_CHECKING:
    from corral.core.sandboxes import SandboxManager

log = logging.getLogger(__name__)

BOOT_ID_PREFIX = "bt"
KEY_FILE = "key.json"
PARTIAL = ".partial"
RETRY_AFTER = 300.0
"""Seconds before a boot snapshot whose making failed is tried again."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What a booted sandbox's saved state depends on, besides the runtime."""

    image_id: str
    vcpus: int
    memory_mb: int
    pids_limit: int
    started: str = ""
    """What runs in it besides the agent (:attr:`Started.key`, a template's service); empty: nothing."""


@dataclass(frozen=True, slots=True)
class Started:
    """What a create starts in its sandbox before handing it out: a template's service, ready.

    A boot snapshot of its shape is taken with it running, so its creates restore
    it running and ``run`` is not called again.
    """

    key: str
    """Names what ``run`` starts (the same key, the same service)."""
    run: Callable[[AgentClient, list[str]], Awaitable[None]]
    """Starts it through the sandbox's agent (its shell given) and returns once it is ready."""


@dataclass(frozen=True, slots=True)
class BootSnapshot:
    key: str
    """Its dir's name: what it was made for, hashed."""
    shape: Shape
    runtime: str | None
    """The runtime's identity when it was made."""
    image: str
    path: Path
    last_used: float


class BootSnapshots:
    """The boot snapshots of one server: looked up by creates, made in the background."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.runtime = manager.runtime
        self.keep = manager.settings.boot_snapshots
        self.dir = manager.settings.data_dir / "boot-snapshots"
        self._identity: str | None = None
        self._making: dict[str, asyncio.Task[None]] = {}
        self._one_at_a_time = asyncio.Lock()
        self._restoring: dict[str, int] = {}
        """Restores reading each boot snapshot now: it is not removed under them."""
        self._doomed: dict[str, Path] = {}
        """Removed while restores read them: moved aside, deleted once the last is done."""
        self._failed: dict[str, float] = {}
        """When the making of each key last failed: it is not tried again for RETRY_AFTER seconds."""

    @property
    def enabled(self) -> bool:
        return self.keep > 0 and self._identity is not None

    async def start(self) -> None:
        """Learn whether the runtime can checkpoint, and remove what no create can use.

        That is a partial one (a crash cut its making short), one of another
        runtime identity (runsc or the agent changed), or one whose image is gone.
        """
        if self.keep <= 0:
            if self.dir.is_dir():
                await asyncio.to_thread(shutil.rmtree, self.dir, True)
            return
        self._identity = await self.runtime.checkpoint_identity()
        if not self.dir.is_dir():
            return
        for entry in list(self.dir.iterdir()):
            saved = self._read(entry)
            if (
                saved is None
                or saved.key != self.key(saved.shape)
                or saved.runtime != self._identity
                or not self.manager.images.store.has(saved.shape.image_id)
            ):
                log.info("removing boot snapshot %s: it is partial or of another runtime or image", entry.name)
                await asyncio.to_thread(shutil.rmtree, entry, True)

    async def aclose(self) -> None:
        for task in self._making.values():
            task.cancel()
        for task in self._making.values():
            with contextlib.suppress(BaseException):
                await task

    def key(self, shape: Shape) -> str:
        text = json.dumps({"shape": asdict(shape), "runtime": self._identity}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    # -- use -----------------------------------------------------------------------

    @contextlib.contextmanager
    def restoring(self, shape: Shape) -> Iterator[Path | None]:
        """The boot snapshot of ``shape`` to restore (kept while the block runs), or None."""
        if not self.enabled:
            yield None
            return
        key = self.key(shape)
        path = self.dir / key
        if not (path / KEY_FILE).is_file():
            yield None
            return
        with contextlib.suppress(OSError):
            os.utime(path / KEY_FILE)  # its last use, for eviction
        self._restoring[key] = self._restoring.get(key, 0) + 1
        try:
            yield path
        finally:
            self._restoring[key] -= 1
            if not self._restoring[key]:
                del self._restoring[key]
                if (doomed := self._doomed.pop(key, None)) is not None:
                    shutil.rmtree(doomed, ignore_errors=True)

    def discard(self, shape: Shape, why: str) -> None:
        """Remove a boot snapshot a restore failed on; the next create of its shape makes a new one."""
        key = self.key(shape)
        log.warning("boot snapshot %s failed to restore (%s); removing it", key, why)
        self._remove(key)

    def remove(self, key: str) -> bool:
        """Remove the boot snapshot ``key``; whether there was one."""
        if not re.fullmatch(r"[0-9a-f]{24}", key) or not (self.dir / key / KEY_FILE).is_file():
            return False
        log.info("removing boot snapshot %s, as asked", key)
        self._remove(key)
        return True

    def want(self, shape: Shape, spec: SandboxSpec, image: str, started: Started | None = None) -> None:
        """Have a boot snapshot of ``shape`` made in the background, if there is none.

        ``spec``: how a sandbox of that shape is built (its id and network are
        replaced by the hidden sandbox's own); ``started``: what is started in it
        before it is saved.
        """
        if not self.enabled:
            return
        key = self.key(shape)
        task = self._making.get(key)
        if (self.dir / key / KEY_FILE).is_file() or (task is not None and not task.done()):
            return
        if time.monotonic() - self._failed.get(key, -RETRY_AFTER) < RETRY_AFTER:
            return  # a template whose readiness check fails would cost a boot per create
        making = self._make(key, shape, spec, image, started)
        self._making[key] = asyncio.create_task(making, name=f"corral-boot-{key}")

    def entries(self) -> list[BootSnapshot]:
        if not self.dir.is_dir():
            return []
        entries = [e for e in sorted(self.dir.iterdir()) if not e.name.endswith(PARTIAL)]
        found = [s for entry in entries if (s := self._read(entry)) is not None]
        return sorted(found, key=lambda s: -s.last_used)

    def making(self) -> int:
        """How many are being made or wait their turn."""
        return sum(1 for task in self._making.values() if not task.done())

    # -- making --------------------------------------------------------------------

    async def _make(self, key: str, shape: Shape, spec: SandboxSpec, image: str, started: Started | None) -> None:
        async with self._one_at_a_time:
            if (self.dir / key / KEY_FILE).is_file():
                return
            began = time.monotonic()
            try:
                size = await self._boot_and_save(key, shape, spec, image, started)
            except CorralError as exc:
                log.warning("could not make a boot snapshot of %s: %s", image, exc.message)
                self._failed[key] = time.monotonic()
                return
            except Exception:
                log.exception("could not make a boot snapshot of %s", image)
                self._failed[key] = time.monotonic()
                return
            log.info(
                "boot snapshot %s of %s (%d vCPU, %d MiB) made in %.0f ms, %d MiB",
                key, image, shape.vcpus, shape.memory_mb, (time.monotonic() - began) * 1000, size >> 20,
            )  # fmt: skip
            self._evict()

    async def _boot_and_save(
        self, key: str, shape: Shape, spec: SandboxSpec, image: str, started: Started | None
    ) -> int:
        manager = self.manager
        sandbox_id = BOOT_ID_PREFIX + manager.new_id_suffix()
        slot = manager.reserve_slot()
        network = links.network_for_slot(manager.settings.sandbox_subnet, slot)
        spec = replace(spec, sandbox_id=sandbox_id, network=network)
        partial = self.dir / (key + PARTIAL)
        handle = RuntimeHandle(sandbox_id, "", {"slot": slot, **_network_info(network)})
        try:
            async with manager.booting():
                handle = await self.runtime.create(spec)
                await manager.wait_for_agent(handle)
            agent, shell = await self._warm_up(handle, shape)
            if started is not None:
                await started.run(agent, shell)
            await asyncio.to_thread(shutil.rmtree, partial, True)
            partial.mkdir(parents=True)
            async with manager.sealed(sandbox_id, address=network.sandbox_address):
                await self.runtime.checkpoint(handle, partial)
            saved = {"shape": asdict(shape), "image": image, "runtime": self._identity, "made_at": time.time()}
            (partial / KEY_FILE).write_text(json.dumps(saved, indent=1))
            await asyncio.to_thread(shutil.rmtree, self.dir / key, True)
            partial.rename(self.dir / key)
        finally:
            manager.forget_agent(sandbox_id)
            # To its end even when the server stops meanwhile: a destroy cut short leaves the
            # hidden sandbox running until the next start.
            await _to_the_end(self._remove_hidden(handle, slot, partial))
        return await asyncio.to_thread(tree_size, self.dir / key)

    async def _remove_hidden(self, handle: RuntimeHandle, slot: int, partial: Path) -> None:
        try:
            await self.runtime.destroy(handle)
        finally:
            self.manager.release_slot(slot)
            await asyncio.to_thread(shutil.rmtree, partial, True)

    async def _warm_up(self, handle: RuntimeHandle, shape: Shape) -> tuple[AgentClient, list[str]]:
        """One command as the default user, so a restored sandbox's first is as quick as a later one."""
        agent = AgentClient(handle.agent_url, http=self.manager.http_for(handle.sandbox_id))
        shell = await self.manager.image_shell(agent, shape.image_id)
        await commands.run(agent, commands.ExecRequest(cmd="true", timeout=30), shell)
        return agent, shell

    def _evict(self) -> None:
        for old in self.entries()[self.keep :]:
            if old.key not in self._restoring:
                log.info("removing boot snapshot %s of %s: least recently used", old.key, old.image)
                self._remove(old.key)

    def _remove(self, key: str) -> None:
        path = self.dir / key
        if key in self._restoring:  # restores read it: moved aside until the last is done
            aside = path.with_name(key + ".old" + PARTIAL)
            with contextlib.suppress(OSError):
                path.rename(aside)
                self._doomed[key] = aside
            return
        shutil.rmtree(path, ignore_errors=True)

    def _read(self, entry: Path) -> BootSnapshot | None:
        try:
            saved: dict[str, Any] = json.loads((entry / KEY_FILE).read_text())
            shape = Shape(**saved["shape"])
            return BootSnapshot(
                key=entry.name,
                shape=shape,
                runtime=saved.get("runtime"),
                image=str(saved.get("image", "")),
                path=entry,
                last_used=(entry / KEY_FILE).stat().st_mtime,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


async def _to_the_end(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; the cancellation goes on after it."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _network_info(network: NetworkSpec) -> dict[str, Any]:
    return {"host_address": network.host_address, "sandbox_address": network.sandbox_address}
