"""Pause and resume, hibernation, snapshots, restore and fork of sandboxes.

States beyond ``running`` (see :mod:`corral.core.sandboxes`):

- ``paused``: frozen in memory (``runsc pause``); any request for it thaws it.
- ``hibernated``: its processes and memory saved to its own dir and the
  sandbox stopped, so it holds no memory; its disk and address stay. Any
  request for it restores it, under the same id and address. A sandbox with
  ``auto_pause`` hibernates after that many idle seconds (no exec, file or
  process call). One with ``on_timeout: pause`` is paused at its timeout.

While paused or hibernated a sandbox's timeout clock stops (``remaining``
keeps what is left) unless ``CORRAL_PAUSED_TIME_COUNTS`` is set.

A snapshot is a whole sandbox on disk: ``runsc checkpoint`` of its processes
and memory plus a copy of its disk's upper dir, taken while it is frozen so the
two agree. Restoring it makes a new sandbox (own id, namespace, address) with
the same processes and files; forking is a snapshot restored N times at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from corral import hostcmd
from corral.core.clock import as_utc, utcnow
from corral.errors import (
    CorralError,
    InvalidRequest,
    RuntimeFailure,
    SandboxNotRunning,
    SandboxPaused,
    SnapshotNotFound,
    SnapshotUnusable,
)
from corral.images.store import tree_size
from corral.runtimes.base import RuntimeHandle, SandboxSpec
from corral.store.models import SandboxRow, SnapshotRow

if TYPE_CHECKING:
    from corral.core.sandboxes import CreateRequest, SandboxManager

log = logging.getLogger(__name__)

RUNNING, PAUSED, HIBERNATED, DEAD = "running", "paused", "hibernated", "dead"
MAX_FORK = 20
MEMORY, UPPER, MANIFEST = "memory", "upper", "manifest.json"
"""A snapshot's dir: the checkpoint image, the copy of the disk's upper dir, and the image's sizes and checksums."""


def new_snapshot_id() -> str:
    return "sn" + secrets.token_hex(8)


def image_manifest(memory: Path) -> dict[str, dict[str, object]]:
    """Size and SHA-256 of every file of a checkpoint image, by name."""
    manifest: dict[str, dict[str, object]] = {}
    for path in sorted(p for p in memory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        manifest[str(path.relative_to(memory))] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return manifest


def check_snapshot_files(path: Path, *, checksums: bool) -> str | None:
    """What is wrong with a snapshot's files, said for a person; None if nothing is.

    Snapshots taken before manifests existed are only checked for their dirs.
    """
    memory = path / MEMORY
    if not memory.is_dir() or not any(memory.iterdir()):
        return f"its checkpoint image ({memory}) is missing"
    if not (path / UPPER).is_dir():
        return f"its copy of the sandbox's disk ({path / UPPER}) is missing"
    try:
        taken = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return f"its manifest ({path / MANIFEST}) is unreadable"
    now = image_manifest(memory) if checksums else None
    for name, was in taken.items():
        file = memory / name
        if not file.is_file():
            return f"its checkpoint image lacks {file}"
        if (size := file.stat().st_size) != was["size"]:
            return f"its checkpoint image {file} is {size} bytes, {was['size']} when it was taken"
        if now is not None and now[name]["sha256"] != was["sha256"]:
            return f"its checkpoint image {file} has changed since it was taken (its checksum differs)"
    return None


class Lifecycle:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.store = manager.store
        self.runtime = manager.runtime
        self.settings = manager.settings
        self.snapshots_dir = manager.settings.data_dir / "snapshots"
        self._last_activity: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._paused_total: dict[str, float] = {}
        self._paused_since: dict[str, float] = {}

    def start(self) -> set[str]:
        """Snapshots and forks a crash cut short: their host commands are stopped, the
        snapshots failed, their files removed.

        Answers the ids of the sandboxes they were taken of: a checkpoint freezes its
        sandbox, so the crash may have left them frozen (see ``SandboxManager.reconcile``).
        """
        # A killed server's children live on: a runsc checkpoint or a cp into a snapshot
        # dir would go on writing into what is removed below. Nothing of this server
        # runs yet, so whatever names the snapshots dir is such a leftover.
        hostcmd.kill_processes_naming(f"{self.snapshots_dir}/")
        interrupted = set()
        for row in self.store.list_snapshots():
            if row.state == "creating":
                self.store.update_snapshot(row.id, state="failed", error="the server stopped while it was being taken")
                interrupted.add(row.sandbox_id)
        if self.snapshots_dir.is_dir():
            known = {row.id for row in self.store.list_snapshots() if row.state == "ready"}
            for entry in self.snapshots_dir.iterdir():
                if entry.name.startswith(".fork-"):  # .fork-<sandbox id>-<random>
                    interrupted.add(entry.name.split("-")[1])
                if entry.name not in known:
                    shutil.rmtree(entry, ignore_errors=True)
        return interrupted

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def settled(self, sandbox_id: str) -> None:
        """Returns once no pause, resume, hibernate, wake or checkpoint of the sandbox is under way."""
        async with self._lock(sandbox_id):
            pass

    def forget(self, sandbox_id: str) -> None:
        self._last_activity.pop(sandbox_id, None)
        self._locks.pop(sandbox_id, None)
        self._paused_total.pop(sandbox_id, None)
        self._paused_since.pop(sandbox_id, None)

    def paused_for(self, sandbox_id: str) -> float:
        """Seconds the sandbox has spent paused while this server ran, a pause under way included.

        A command's timeout leaves them out, as a sandbox's does (both count them
        with ``paused_time_counts``): a command paused with its sandbox is not killed
        for the time it was frozen. Only differences between two readings mean anything.
        """
        if self.settings.paused_time_counts:
            return 0.0
        since = self._paused_since.get(sandbox_id)
        return self._paused_total.get(sandbox_id, 0.0) + (time.monotonic() - since if since is not None else 0.0)

    # -- pause, resume, hibernate ----------------------------------------------

    def touch(self, sandbox_id: str) -> None:
        """Someone used the sandbox: its idle time starts over."""
        self._last_activity[sandbox_id] = time.monotonic()

    async def ensure_awake(self, sandbox_id: str) -> SandboxRow:
        """Before any request to its agent: thaw or wake the sandbox if need be; its row after.

        A pause, hibernate or checkpoint under way is let finish first: a request sent to
        its agent meanwhile would find it frozen, or gone.
        """
        self.touch(sandbox_id)
        await self.settled(sandbox_id)
        row = self.manager.get(sandbox_id)
        if row.state in (PAUSED, HIBERNATED):
            row = await self.resume(sandbox_id)
        return row

    async def pause(self, sandbox_id: str, *, fresh_timeout: bool = False) -> SandboxRow:
        """Freeze it in memory; ``fresh_timeout``: a whole timeout once it is back (a pause at its timeout)."""
        async with self._lock(sandbox_id):
            row = self._check(sandbox_id, pausing=True)
            await self.runtime.pause(self.manager.runtime_handle(sandbox_id))
            self._paused_since[sandbox_id] = time.monotonic()
            log.info("sandbox %s paused", sandbox_id)
            return self._stop_clock(row, PAUSED, remaining=float(row.timeout) if fresh_timeout else None)

    async def hibernate(
        self, sandbox_id: str, *, fresh_timeout: bool = False, idle_for: float | None = None
    ) -> SandboxRow:
        """Save it to disk and free its memory; ``fresh_timeout``: a whole timeout once it is back.

        With ``idle_for``, only if it is still idle that long once its lock is held.
        """
        async with self._lock(sandbox_id):
            row = self.manager.get(sandbox_id)
            if idle_for is not None and not self._idle(sandbox_id, idle_for):
                return row
            if row.state == HIBERNATED:
                raise SandboxPaused(f"sandbox '{sandbox_id}' is hibernated already", details={"state": row.state})
            if row.state not in (RUNNING, PAUSED):
                raise SandboxNotRunning(f"sandbox '{sandbox_id}' is {row.state}", details={"state": row.state})
            async with self._sealed(sandbox_id, row.state) as handle:
                await self.runtime.hibernate(handle)
            self.manager.forget_agent(sandbox_id)
            log.info("sandbox %s hibernated", sandbox_id)
            if row.state == PAUSED:  # its clock stopped already
                return self._set(sandbox_id, state=HIBERNATED)
            return self._stop_clock(row, HIBERNATED, remaining=float(row.timeout) if fresh_timeout else None)

    async def resume(self, sandbox_id: str) -> SandboxRow:
        """Thaw a paused sandbox or wake a hibernated one; a running one is left as it is."""
        async with self._lock(sandbox_id):
            row = self.manager.get(sandbox_id)
            handle = self.manager.runtime_handle(sandbox_id)
            if row.state == RUNNING:
                return row
            if row.state == PAUSED:
                await self.runtime.resume(handle)
            elif row.state == HIBERNATED:
                started = time.monotonic()
                await self.runtime.wake(handle)
                try:
                    await self.manager.wait_for_agent(handle)
                except CorralError as exc:  # it runs, but is no use: the store must not call it hibernated
                    self.manager.mark_dead(sandbox_id, f"woken, but its agent did not answer ({exc.message})")
                    raise
                log.info("sandbox %s woken in %.0f ms", sandbox_id, (time.monotonic() - started) * 1000)
            else:
                raise SandboxNotRunning(f"sandbox '{sandbox_id}' is {row.state}", details={"state": row.state})
            if (since := self._paused_since.pop(sandbox_id, None)) is not None:
                self._paused_total[sandbox_id] = self._paused_total.get(sandbox_id, 0.0) + time.monotonic() - since
            self.touch(sandbox_id)
            return self._start_clock(row)

    def _check(self, sandbox_id: str, *, pausing: bool = False) -> SandboxRow:
        row = self.manager.get(sandbox_id)
        if pausing and row.state in (PAUSED, HIBERNATED):
            raise SandboxPaused(f"sandbox '{sandbox_id}' is {row.state} already", details={"state": row.state})
        if row.state != RUNNING:
            raise SandboxNotRunning(f"sandbox '{sandbox_id}' is {row.state}", details={"state": row.state})
        return row

    def _stop_clock(self, row: SandboxRow, state: str, *, remaining: float | None = None) -> SandboxRow:
        if self.settings.paused_time_counts or row.ends_at is None:
            return self._set(row.id, state=state)
        if remaining is None:
            remaining = max(0.0, (as_utc(row.ends_at) - utcnow()).total_seconds())
        return self._set(row.id, state=state, ends_at=None, remaining=remaining)

    def _start_clock(self, row: SandboxRow) -> SandboxRow:
        if row.remaining is None:
            return self._set(row.id, state=RUNNING)
        return self._set(row.id, state=RUNNING, ends_at=utcnow() + timedelta(seconds=row.remaining), remaining=None)

    def _set(self, sandbox_id: str, **fields: object) -> SandboxRow:
        updated = self.store.update_sandbox(sandbox_id, **fields)
        assert updated is not None
        return updated

    async def reap_idle(self) -> None:
        """Hibernate every running sandbox idle for its ``auto_pause`` seconds."""
        for row in self.store.list_sandboxes(states={RUNNING}):
            if row.auto_pause and self._idle(row.id, row.auto_pause):
                log.info("sandbox %s idle for %ds: hibernating it", row.id, row.auto_pause)
                try:
                    await self.hibernate(row.id, idle_for=row.auto_pause)
                except (SandboxPaused, SandboxNotRunning):
                    pass
                except CorralError as exc:  # the disk is full, say: tried again once as idle again
                    self.touch(row.id)
                    log.warning("sandbox %s could not hibernate (%s); it runs on, and is tried again "
                                "after %ds more of idleness", row.id, exc.message, row.auto_pause)  # fmt: skip

    def _idle(self, sandbox_id: str, seconds: float) -> bool:
        """No request for ``seconds``, and no command's output being read (a long command is use)."""
        now = time.monotonic()
        if self.manager.in_use(sandbox_id):
            self.touch(sandbox_id)
            return False
        return now - self._last_activity.setdefault(sandbox_id, now) >= seconds

    # -- snapshots, restore, fork ----------------------------------------------

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.snapshots_dir / snapshot_id

    async def snapshot(self, sandbox_id: str, *, metadata: Mapping[str, str] | None = None) -> SnapshotRow:
        """Save the whole sandbox; it is frozen meanwhile, then as it was (running, paused or hibernated)."""
        self.touch(sandbox_id)
        row = self._check_saveable(sandbox_id)
        snapshot = self.store.add_snapshot(
            SnapshotRow(
                id=new_snapshot_id(),
                sandbox_id=row.id,
                image=row.image,
                image_id=row.image_id or "",
                template=row.template,
                vcpus=row.vcpus,
                memory_mb=row.memory_mb,
                disk_mb=row.disk_mb,
                envs=dict(row.envs),
                meta=dict(metadata or {}),
                state="creating",
                size=0,
                created_at=utcnow(),
            )
        )
        final = self.snapshot_dir(snapshot.id)
        partial = final.with_name(final.name + ".partial")
        partial.mkdir(parents=True)
        try:
            await self._checkpoint(sandbox_id, partial)
            manifest = await asyncio.to_thread(image_manifest, partial / MEMORY)
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
            partial.rename(final)
        except BaseException as exc:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            self.store.update_snapshot(snapshot.id, state="failed", error=str(getattr(exc, "message", exc)))
            raise
        size = await asyncio.to_thread(tree_size, final)
        log.info("sandbox %s snapshotted as %s (%d MiB)", sandbox_id, snapshot.id, size >> 20)
        return self._snapshot_set(snapshot.id, state="ready", size=size)

    def _check_saveable(self, sandbox_id: str) -> SandboxRow:
        row = self.manager.get(sandbox_id)
        if row.state not in (RUNNING, PAUSED, HIBERNATED):
            raise SandboxNotRunning(f"sandbox '{sandbox_id}' is {row.state}", details={"state": row.state})
        return row

    async def _checkpoint(self, sandbox_id: str, dest: Path) -> None:
        """The runtime's checkpoint of the sandbox into ``dest``, under its lock; it is left as it was."""
        async with self._lock(sandbox_id):
            state = self._check_saveable(sandbox_id).state
            if state == HIBERNATED:  # no agent runs: nothing to seal
                await self.runtime.checkpoint(self.manager.runtime_handle(sandbox_id), dest, hibernated=True)
                return
            async with self._sealed(sandbox_id, state) as handle:
                await self.runtime.checkpoint(handle, dest)

    @contextlib.asynccontextmanager
    async def _sealed(self, sandbox_id: str, state: str) -> AsyncIterator[RuntimeHandle]:
        """Its agent's connections closed for a checkpoint (:meth:`SandboxManager.sealed`), under its lock.

        A paused sandbox's agent is frozen and cannot close its side: with connections
        open (calls that were waiting on it), it is thawed for that and paused again.
        Its copies would have the half-closed connections, and their agents spin on them.
        """
        handle = self.manager.runtime_handle(sandbox_id)
        thawed = state == PAUSED and self.manager.has_agent_connections(sandbox_id)
        if thawed:
            await self.runtime.resume(handle)
        try:
            async with self.manager.sealed(sandbox_id):
                if thawed:
                    await self.runtime.pause(handle)
                    thawed = False
                yield handle
        finally:
            if thawed:  # the connections could not be closed: it is left as it was
                await self.runtime.pause(handle)

    def get_snapshot(self, snapshot_id: str) -> SnapshotRow:
        row = self.store.get_snapshot(snapshot_id)
        if row is None:
            raise SnapshotNotFound(f"no snapshot '{snapshot_id}' exists", details={"snapshot_id": snapshot_id})
        return row

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.get_snapshot(snapshot_id)
        self.store.delete_snapshot(snapshot_id)
        shutil.rmtree(self.snapshot_dir(snapshot_id), ignore_errors=True)

    async def restore(self, snapshot_id: str, request: CreateRequest) -> SandboxRow:
        """A new sandbox from a snapshot: the same processes, memory and files.

        A snapshot whose files are missing or changed since it was taken is marked
        ``failed`` and refused (``snapshot_unusable``). Sizes are checked before the
        restore; checksums only once runsc has failed on it, which keeps a good
        snapshot's restore as fast as runsc's own. Its vCPUs and memory are the
        snapshot's (its processes were saved with them): another asked is refused.
        """
        snapshot = self.get_snapshot(snapshot_id)
        asked = {"vcpus": request.vcpus, "memory_mb": request.memory_mb}
        if other := sorted(name for name, value in asked.items() if value not in (None, getattr(snapshot, name))):
            raise InvalidRequest(
                f"a sandbox restored from snapshot '{snapshot_id}' has its {snapshot.vcpus} vCPU and "
                f"{snapshot.memory_mb} MiB (its processes were saved with them): leave out {' and '.join(other)}",
                details={"snapshot_id": snapshot_id, "vcpus": snapshot.vcpus, "memory_mb": snapshot.memory_mb},
            )
        if snapshot.state != "ready":
            why = "it is still being taken" if snapshot.state == "creating" else f"it {snapshot.state}"
            raise SnapshotUnusable(
                f"snapshot '{snapshot_id}' cannot be restored: {why}"
                + (f" ({snapshot.error})" if snapshot.error else "")
                + ("" if snapshot.state == "creating" else "; delete it and take a new snapshot"),
                details={"snapshot_id": snapshot_id, "state": snapshot.state},
            )
        path = self.snapshot_dir(snapshot_id)
        if damage := await asyncio.to_thread(check_snapshot_files, path, checksums=False):
            raise self._unusable(snapshot, damage)
        try:
            return await self._restore_from(path, snapshot, request)
        except RuntimeFailure as exc:
            if damage := await asyncio.to_thread(check_snapshot_files, path, checksums=True):
                raise self._unusable(snapshot, damage) from exc
            raise

    def _unusable(self, snapshot: SnapshotRow, damage: str) -> SnapshotUnusable:
        """Mark a snapshot whose files are damaged ``failed``; the error to answer."""
        log.warning("snapshot %s is damaged: %s", snapshot.id, damage)
        self.store.update_snapshot(snapshot.id, state="failed", error=damage)
        return SnapshotUnusable(
            f"snapshot '{snapshot.id}' cannot be restored: {damage}; delete it and take a new snapshot",
            details={"snapshot_id": snapshot.id, "state": "failed"},
        )

    async def fork(self, sandbox_id: str, count: int, request: CreateRequest) -> list[SandboxRow]:
        """``count`` independent copies of a sandbox (running, paused or hibernated); it is left as it was."""
        if not 1 <= count <= MAX_FORK:
            raise InvalidRequest(f"count must be between 1 and {MAX_FORK}, got {count}", details={"count": count})
        self.touch(sandbox_id)
        row = self._check_saveable(sandbox_id)
        work = self.snapshots_dir / f".fork-{sandbox_id}-{secrets.token_hex(4)}"
        work.mkdir(parents=True)
        # The copies' disks and links are made while the checkpoint is written; each
        # waits for it only to fill its disk and restore.
        checkpointed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def checkpoint() -> None:
            try:
                await self._checkpoint(sandbox_id, work)
            except BaseException as exc:
                checkpointed.set_exception(RuntimeFailure(f"could not checkpoint sandbox {sandbox_id}: {exc}"))
                raise
            checkpointed.set_result(None)

        try:
            source = SnapshotRow(
                id="", sandbox_id=row.id, image=row.image, image_id=row.image_id or "", template=row.template,
                vcpus=row.vcpus, memory_mb=row.memory_mb, disk_mb=row.disk_mb, envs=dict(row.envs), meta={},
                state="ready", size=0, created_at=utcnow(),
            )  # fmt: skip
            request = replace(
                request,
                metadata={**row.meta, **request.metadata, "corral.forked_from": row.id},
                network=row.network if request.network is None else request.network,  # copies keep its policy
            )
            taken, *results = await asyncio.gather(
                checkpoint(),
                *(self._restore_from(work, source, request, ready=checkpointed) for _ in range(count)),
                return_exceptions=True,
            )
        finally:
            # Its copies hold what they need of it: it goes after the answer (the next start
            # removes it should the server stop first).
            self.manager.in_background(asyncio.to_thread(shutil.rmtree, work, True), name=f"corral-rm-{work.name}")
            if checkpointed.done() and not checkpointed.cancelled():
                checkpointed.exception()  # seen, even when no copy got as far as waiting for it
        made = [r for r in results if isinstance(r, SandboxRow)]
        failed = [r for r in (taken, *results) if isinstance(r, BaseException)]  # the checkpoint's first
        if failed:
            for sandbox in made:
                with contextlib.suppress(Exception):
                    await self.manager.kill(sandbox.id)
            raise failed[0]
        log.info("sandbox %s forked into %s", sandbox_id, ", ".join(r.id for r in made))
        return made

    async def _restore_from(
        self, path: Path, source: SnapshotRow, request: CreateRequest, *, ready: asyncio.Future[None] | None = None
    ) -> SandboxRow:
        images = self.manager.images.store
        if not images.has(source.image_id):
            raise RuntimeFailure(f"the image this snapshot was taken on ({source.image}) is gone from the store")
        image = images.get(source.image_id)
        create = replace(
            request,
            vcpus=source.vcpus,
            memory_mb=source.memory_mb,
            disk_mb=request.disk_mb or source.disk_mb,
            envs={**source.envs, **request.envs},
            template=source.template,
        )

        async def start(spec: SandboxSpec) -> RuntimeHandle:
            return await self.runtime.restore(spec, path, ready=ready)

        row = await self.manager.create(create, image=image, image_label=source.image, start=start, boots=False)
        self.manager.inherit_shell(row.id, source.sandbox_id)  # its files are the source's: no stat on its first run
        self.touch(row.id)
        return row

    def _snapshot_set(self, snapshot_id: str, **fields: object) -> SnapshotRow:
        updated = self.store.update_snapshot(snapshot_id, **fields)
        assert updated is not None
        return updated
