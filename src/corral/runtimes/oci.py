"""The OCI runtime backend: gVisor's ``runsc`` (the default) or ``runc``.

Each sandbox gets, under ``<data_dir>/sandboxes/<id>/``:

- ``rootfs/``: an overlayfs mount whose lower dir is the image's shared
  read-only rootfs and whose upper dir (``upper/``) holds everything the
  sandbox writes, ``/tmp`` included (bind-mounted from the overlay so that
  it is part of the sandbox's disk, not a tmpfs in its memory);
- ``bundle/config.json``: the OCI spec, whose init is corral's agent, shipped
  read-only at ``/.corral``;
- ``console.log``: the agent's stdout and stderr.

and its own network namespace (see :mod:`corral.net.links`). The runtime's
own state lives under ``/run/corral/<runtime>``, so a sandbox keeps running
when the server stops, and a restarted server finds it again by its id.

gVisor and network namespaces: runsc (at least up to 2024 releases) refuses to
start its own netstack when it believes it runs in the host's namespace, which
it decides by whether ``/proc/sys/net/core/rmem_default`` exists; on kernels
6.x that file exists in every namespace. So runsc is started in a private
mount namespace where ``/proc/sys/net`` is hidden under an empty tmpfs, and
the sandbox's namespace is named by path in the spec. runsc then runs in the
host's network namespace, where its control socket lives: every later runsc
command for the sandbox runs from there too (the server's own namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from corral import hostcmd
from corral._version import __version__
from corral.errors import CorralError, DiskFull, RuntimeFailure
from corral.images.agent_bundle import (
    MOUNT_POINT,
    agent_command,
    agent_env,
    build_agent_bundle,
    prune_agent_bundles,
)
from corral.images.store import tree_size
from corral.mounts import mount_overlay, mount_points, unmount
from corral.net import links
from corral.runtimes import cgroups
from corral.runtimes.base import (
    AGENT_PORT,
    NetworkSpec,
    Runtime,
    RuntimeHandle,
    RuntimeState,
    SandboxSpec,
)
from corral.runtimes.consoles import carry_console, console_path, read_console, save_console_end, trim_consoles
from corral.runtimes.disks import DISK, DISK_IMAGE, SpareDisks, format_disk, mount_disk
from corral.runtimes.etc_files import write_own_files
from corral.runtimes.upper_copy import copy_upper, link_or_copy_tree

log = logging.getLogger(__name__)

OWN_RUNSC = Path("/usr/local/lib/corral/bin/runsc")
"""Where ``scripts/setup`` installs a current runsc (Debian 12's is from 2022)."""

STATE_ROOT = Path("/run/corral")
HIBERNATED = "hibernated"
"""A hibernated sandbox's saved processes and memory, in its own dir."""
SANDBOX_OWN_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")
"""Files corral writes into each sandbox's rootfs: never part of an exported layer (Docker's rule too)."""

SANDBOX_HOSTNAME = "corral"
"""Every sandbox's hostname. One name for all: a restored or forked sandbox keeps the kernel's
hostname it was saved with, and a sandbox made from a boot snapshot is one (E2B's are all ``e2b.local``)."""

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
"""Root inside a sandbox gets Docker's default set, no more."""

CPU_PERIOD_US = 100_000

RESTORE_HEADROOM = 256 << 20
"""Host memory a restore needs beyond the saved memory (gVisor's own, while it loads)."""

MAX_OPEN_FILES = 1 << 20


def open_files_limit(kind: str) -> int:
    """RLIMIT_NOFILE of a sandbox's init.

    gVisor applies it in its own kernel. runc sets it on a host process, and
    raising a hard limit above the server's own needs CAP_SYS_RESOURCE, which
    root may lack (in a container, for one): then runc fails every start with
    EPERM. So under runc the server's own hard limit is the ceiling.
    """
    if kind == "runsc":
        return MAX_OPEN_FILES
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)


@contextlib.contextmanager
def host_room(where: Path, what: str) -> Iterator[None]:
    """Turn the host's file system running out of room for ``what`` in ``where`` into :class:`DiskFull`."""
    try:
        yield
    except CorralError as exc:
        if not isinstance(exc, RuntimeFailure) or "no space left on device" not in exc.message.lower():
            raise
        raise _no_room(where, what) from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise _no_room(where, what) from exc


SAVE_HEADROOM = 32 << 20
"""Bytes a memory image may need beyond the sandbox's memory in use (its kernel's state)."""


def check_room(sandbox_id: str, where: Path, what: str) -> None:
    """Refuse, before it starts, a save of a sandbox's memory that the disk has no room for.

    A sandbox's memory (gVisor's memory file, shared memory to the host) is what its
    memory image holds, give or take its kernel's state.
    """
    in_use = cgroups.memory_stat(cgroups.sandbox_cgroup(sandbox_id), "shmem")
    if in_use is None:
        return
    need = in_use + SAVE_HEADROOM
    if _free(where) < need:
        raise _no_room(where, what, need=need)


def _free(where: Path) -> int:
    return shutil.disk_usage(next(p for p in (where, *where.parents) if p.exists())).free


def _no_room(where: Path, what: str, *, need: int | None = None) -> DiskFull:
    place = next(p for p in (where.parent, *where.parents) if p.exists())  # outlives a half-written image
    free = _free(place)
    needs = f"it needs about {need >> 20} MiB, " if need is not None else ""
    return DiskFull(
        f"the server's disk has no room for {what}: {needs}{free >> 20} MiB are free in {place}; "
        "delete snapshots, images or sandboxes, or give the data dir more room",
        details={"path": str(place), "free_bytes": free, **({"needed_bytes": need} if need is not None else {})},
    )


def find_runsc(configured: str | None = None) -> str:
    """The runsc to use: the configured one, corral's own, or the one on PATH."""
    if configured:
        return configured
    if OWN_RUNSC.exists():
        return str(OWN_RUNSC)
    found = shutil.which("runsc")
    if not found:
        raise RuntimeFailure("runsc is not installed: run scripts/setup (or apt-get install runsc)")
    return found


async def runsc_release(binary: str) -> int:
    """The release date of a runsc as YYYYMMDD (0 if it cannot be told)."""
    out = await hostcmd.run([binary, "--version"], check=False)
    match = re.search(r"(20\d{6})", out.stdout)
    return int(match.group(1)) if match else 0


async def checkpoints_compress(binary: str) -> bool:
    """Whether this runsc's ``checkpoint`` takes ``--compression`` (Debian 12's, from 2022, does not)."""
    out = await hostcmd.run([binary, "checkpoint", "--help"], check=False)
    return "-compression" in out.stdout + out.stderr


def host_limits(spec: SandboxSpec) -> tuple[int, int]:
    """The host cgroup's memory (bytes) and pids limits for a gVisor sandbox.

    Under gVisor the sandbox's processes live inside one host process (the
    sentry) plus helper processes: when the host cgroup's memory or pids limit
    is hit, the host kills or starves the sentry and the whole sandbox dies.
    So the limits a user asks for are enforced *inside* by the agent (an OOM
    killer that ends the largest process; RLIMIT_NPROC, which gVisor applies
    on fork), and the host cgroup sits above them with headroom, as the wall
    that protects the host should the inner limit be outrun. The memory limit
    goes into the OCI spec as asked (gVisor shows it as ``MemTotal``) and the
    host cgroup is raised to the wall right after the sandbox starts.
    """
    return host_memory_limit(spec.memory_mb), spec.pids_limit * 4 + 512


def upper_dir(sdir: Path) -> Path:
    """The sandbox's changes to its image (``upper/`` beside ``disk/`` in sandboxes made before disks had sizes)."""
    legacy = sdir / "upper"
    return legacy if legacy.is_dir() else sdir / DISK / "upper"


def host_memory_limit(memory_mb: int) -> int:
    """The host cgroup's memory wall (bytes) above a sandbox's own ``memory_mb``: see :func:`host_limits`."""
    return (memory_mb + max(256, memory_mb)) << 20


async def seal_read_only(path: Path) -> None:
    """Make ``path`` a read-only bind mount on the host (idempotent).

    The agent bundle is bind-mounted read-only into every sandbox, but gVisor
    was seen to let a sandbox's root truncate a file through that mount (an
    ``open(O_TRUNC)`` of ``/.corral/bin/python3``), breaking every later
    sandbox. A read-only mount on the host is enforced by the host's kernel,
    whatever the sandbox's file server does. Whether it is a mount already is
    asked of the mount table: ``os.path.ismount`` misses a bind mount within
    one file system, and each server start would stack another on it.
    """
    if str(path.resolve()) not in mount_points():
        await hostcmd.run(["mount", "--bind", str(path), str(path)])
    await hostcmd.run(["mount", "-o", "remount,bind,ro", str(path)])


class OciRuntime(Runtime):
    """Sandboxes as OCI containers under ``runsc`` or ``runc``."""

    def __init__(
        self,
        *,
        kind: Literal["runsc", "runc"],
        data_dir: Path,
        binary: str | None = None,
        platform: str = "systrap",
        snapshot_compression: str = "none",
        spare_disks: int = 0,
        spare_disk_mb: int = 0,
        favor_cgroup_moves: bool = False,
    ) -> None:
        self.name = kind
        self.kind = kind
        self.data_dir = data_dir
        self.binary = binary or (find_runsc() if kind == "runsc" else shutil.which("runc") or "runc")
        self.platform = platform
        self.snapshot_compression = snapshot_compression
        self.favor_cgroup_moves = favor_cgroup_moves
        self.state_root = STATE_ROOT / kind
        self._bundle: Path | None = None
        self._ready = asyncio.Lock()
        self.spare_disks = SpareDisks(
            data_dir / "spare-disks", size_mb=spare_disk_mb, keep=spare_disks, activity=self.activity
        )
        self.links = links.Links()
        self._deletes: dict[str, asyncio.Task[None]] = {}
        """``runsc delete`` of hibernated sandboxes, running in the background (see :meth:`hibernate`)."""
        self._undeleted: set[str] = set()
        """Sandboxes whose last such delete failed: their stopped record is still there."""
        self._trimming: asyncio.Task[None] | None = None
        """Keeps the sandboxes' consoles from growing for ever (see :mod:`corral.runtimes.consoles`)."""

    # -- set-up ----------------------------------------------------------------

    async def _prepare(self) -> Path:
        """Once per process: the agent bundle, a platform this runsc has, and quick cgroup moves (if asked)."""
        async with self._ready:
            if self._bundle is None:
                if self.kind == "runsc":
                    if await runsc_release(self.binary) < 20230101:
                        self.platform = "ptrace"  # systrap arrived in 2023
                    if not await checkpoints_compress(self.binary):
                        self.snapshot_compression = ""  # an older runsc always compresses
                self.state_root.mkdir(parents=True, exist_ok=True)
                if self.favor_cgroup_moves:
                    await cgroups.favor_moves(STATE_ROOT / "cgroup2")
                bundle = await asyncio.to_thread(build_agent_bundle, self.data_dir / "agent")
                await seal_read_only(bundle)
                await asyncio.to_thread(prune_agent_bundles, bundle, self.data_dir / "sandboxes")
                self._bundle = bundle
                self.spare_disks.refill()
                self._trimming = asyncio.create_task(
                    trim_consoles(self.data_dir / "sandboxes"), name="corral-trim-consoles"
                )
            return self._bundle

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.data_dir / "sandboxes" / sandbox_id

    def _runtime_argv(self, *args: str) -> list[str]:
        argv = [self.binary, "--root", str(self.state_root)]
        if self.kind == "runsc":
            argv += [
                "--network=sandbox",
                "--overlay2=none",
                "--cpu-num-from-quota",
                # A checkpoint resets TCP connections from outside (clients reconnect)
                # instead of refusing to save them.
                "--net-disconnect-ok",
                f"--platform={self.platform}",
            ]
        return argv + list(args)

    # -- Runtime ---------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> RuntimeHandle:
        return await self._build(spec, lambda sdir: self._start(spec.sandbox_id, sdir, "run"))

    async def _build(
        self,
        spec: SandboxSpec,
        start: Callable[[Path], Awaitable[None]],
        *,
        before_mount: Callable[[Path], Awaitable[None]] | None = None,
        memory_limit: Callable[[], int] | None = None,
    ) -> RuntimeHandle:
        """Disk, link and bundle for ``spec``, then ``start(sandbox_dir)``; on failure nothing is left."""
        bundle_dir = await self._prepare()
        missing = [str(layer) for layer in spec.image_layers if not layer.is_dir()]
        if missing or not spec.image_layers:
            raise RuntimeFailure(f"image layers are missing: {missing}")
        sdir = self.sandbox_dir(spec.sandbox_id)
        handle = RuntimeHandle(
            sandbox_id=spec.sandbox_id,
            agent_url=f"http://{spec.network.sandbox_address}:{AGENT_PORT}",
            info={
                "runtime": self.kind,
                "dir": str(sdir),
                "slot": spec.network.slot,
                "host_address": spec.network.host_address,
                "sandbox_address": spec.network.sandbox_address,
                "layers": [str(layer) for layer in spec.image_layers],  # to mount its rootfs again after a reboot
            },
        )
        try:
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / "handle.json").write_text(json.dumps({"agent_url": handle.agent_url, "info": handle.info}))

            async def disk() -> Path:
                return await self._mount_rootfs(sdir, spec, fill=before_mount)

            began = time.perf_counter()
            # Disk and link are independent: made side by side (a TaskGroup stops the
            # other half should one fail, so destroy below never races it).
            try:
                async with asyncio.TaskGroup() as group:
                    rootfs_task = group.create_task(disk())
                    group.create_task(self.links.create(spec.sandbox_id, spec.network))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None  # what went wrong, not the group that carried it
            rootfs = rootfs_task.result()
            log.debug("sandbox %s: disk and link in %.1f ms", spec.sandbox_id, 1000 * (time.perf_counter() - began))
            config = self._oci_config(spec, rootfs, bundle_dir)
            if memory_limit is not None:
                limit = memory_limit()
                config["linux"]["resources"]["memory"].update(limit=limit, swap=limit)
            (sdir / "bundle").mkdir(exist_ok=True)
            (sdir / "bundle" / "config.json").write_text(json.dumps(config, indent=1))
            await start(sdir)
            if self.kind == "runsc":
                cgroups.raise_memory_limit(config["linux"]["cgroupsPath"], host_limits(spec)[0])
        except BaseException:
            await self.destroy(handle)
            raise
        return handle

    async def host_pid(self, handle: RuntimeHandle) -> int | None:
        out = await hostcmd.run(self._runtime_argv("state", handle.sandbox_id), check=False)
        try:
            record = json.loads(out.stdout) if out.returncode == 0 else {}
        except json.JSONDecodeError:
            return None
        pid = int(record.get("pid") or 0)
        return pid if record.get("status") in ("running", "paused") and pid > 0 else None

    async def stop_cause(self, handle: RuntimeHandle) -> str | None:
        if cgroups.oom_kills(cgroups.sandbox_cgroup(handle.sandbox_id)):
            return "the host's OOM killer ended it: it outgrew the memory the host allows it, memory_mb plus headroom"
        return None

    async def state(self, handle: RuntimeHandle) -> RuntimeState:
        out = await hostcmd.run(self._runtime_argv("state", handle.sandbox_id), check=False)
        if out.returncode != 0:
            hibernated = self._dir(handle) / HIBERNATED / "memory"
            return RuntimeState.HIBERNATED if hibernated.is_dir() else RuntimeState.MISSING
        try:
            record = json.loads(out.stdout)
        except json.JSONDecodeError:
            return RuntimeState.MISSING
        status = record.get("status", "")
        pid = int(record.get("pid") or 0)
        if status in ("running", "paused") and pid > 0 and not hostcmd.alive(pid):
            status = "stopped"  # exited; runsc says what it last did until the host's init reaps the process
        if status == "stopped" and (self._dir(handle) / HIBERNATED / "memory").is_dir():
            # Saved by a hibernate whose `runsc delete` has not ended, or never ran (the
            # server stopped first): it is hibernated, and its record goes now.
            self._delete_later(handle.sandbox_id)
            return RuntimeState.HIBERNATED
        return {
            "running": RuntimeState.RUNNING,
            "created": RuntimeState.RUNNING,
            "paused": RuntimeState.PAUSED,
        }.get(status, RuntimeState.STOPPED)

    async def stop(self, handle: RuntimeHandle) -> None:
        await hostcmd.run(self._runtime_argv("kill", "--all", handle.sandbox_id, "KILL"), check=False)

    async def leftovers(self, known: set[str]) -> list[RuntimeHandle]:
        found = []
        for record in sorted((self.data_dir / "sandboxes").glob("*/handle.json")):
            sandbox_id = record.parent.name
            if sandbox_id in known:
                continue
            try:
                saved = json.loads(record.read_text())
                found.append(RuntimeHandle(sandbox_id, saved["agent_url"], dict(saved["info"])))
            except (OSError, ValueError, KeyError):
                found.append(RuntimeHandle(sandbox_id, "", {"dir": str(record.parent)}))
        return found

    async def destroy(self, handle: RuntimeHandle) -> None:
        sid = handle.sandbox_id
        await self._record_deleted(sid)
        self._undeleted.discard(sid)  # its delete below (it succeeds when there is nothing to delete)
        # runsc delete of a live sandbox takes seconds; kill it first so it stops at once.
        await self.stop(handle)
        deleted = await hostcmd.run(self._runtime_argv("delete", "--force", sid), check=False, timeout=30)
        sdir = Path(handle.info.get("dir") or self.sandbox_dir(sid))
        # What runsc no longer knows of: a start or restore a crash cut short (its sandbox
        # process made, its state not yet saved), or a copy into its disk. Such a sandbox's
        # cgroups, lock file and socket are left behind by runsc too.
        await asyncio.to_thread(hostcmd.kill_processes_naming, f"{sdir}/")
        await asyncio.to_thread(cgroups.remove, cgroups.sandbox_cgroup(sid))
        if self.kind == "runsc" and deleted.returncode == 0:  # no record of it left: what names it is litter
            for litter in self.state_root.glob(f"*{sid}*"):
                if not litter.is_dir():
                    litter.unlink(missing_ok=True)
        rootfs = sdir / "rootfs"
        for target in (rootfs / "tmp", rootfs, sdir / DISK):
            try:
                await asyncio.to_thread(unmount, target)
            except OSError as exc:
                log.warning("sandbox %s: %s", sid, exc)
        if "slot" in handle.info:
            await links.delete_link(sid, links.network_from_info(handle.info))
        elif links.netns_path(sid).exists():  # no record of its link: its end dies with the namespace
            await hostcmd.run(["ip", "netns", "del", links.netns_name(sid)], check=False)
        await asyncio.to_thread(shutil.rmtree, sdir, True)

    async def export_changes(self, handle: RuntimeHandle, dest: Path) -> None:
        await self._mount_disk_again(self._dir(handle))
        upper = upper_dir(self._dir(handle))
        if not upper.is_dir():
            raise RuntimeFailure(f"sandbox {handle.sandbox_id} has no filesystem left to export")
        running = await self._pause_if_running(handle)  # nothing writes while its files are copied
        try:
            # As cp -a: owners, modes, xattrs (opaque dirs) and whiteouts (0/0 char devices) kept.
            await copy_upper(upper, dest)
        finally:
            if running:
                await hostcmd.run(self._runtime_argv("resume", handle.sandbox_id), check=False)
        for own in SANDBOX_OWN_FILES:  # written by corral for this sandbox, not part of its changes
            with contextlib.suppress(FileNotFoundError):
                (dest / own).unlink()
        with contextlib.suppress(OSError):
            (dest / MOUNT_POINT.lstrip("/")).rmdir()

    # -- lifecycle ---------------------------------------------------------------

    async def pause(self, handle: RuntimeHandle) -> None:
        await hostcmd.run(self._runtime_argv("pause", handle.sandbox_id))

    async def resume(self, handle: RuntimeHandle) -> None:
        await hostcmd.run(self._runtime_argv("resume", handle.sandbox_id))

    async def _pause_if_running(self, handle: RuntimeHandle) -> bool:
        """Pause it if it runs; whether it did. One ``runsc`` for a running sandbox, not two."""
        paused = await hostcmd.run(self._runtime_argv("pause", handle.sandbox_id), check=False)
        if paused.returncode == 0:
            return True
        if await self.state(handle) is RuntimeState.RUNNING:
            raise RuntimeFailure(
                f"could not pause sandbox {handle.sandbox_id}: {paused.stderr.strip()[-500:]}",
                details={"sandbox_id": handle.sandbox_id},
            )
        return False

    async def checkpoint(self, handle: RuntimeHandle, dest: Path, *, hibernated: bool = False) -> None:
        self._needs_runsc("snapshot")
        sid, upper = handle.sandbox_id, upper_dir(self._dir(handle))
        if hibernated:  # saved already, and stopped: nothing writes to its files
            await self._mount_disk_again(self._dir(handle))
            await asyncio.to_thread(link_or_copy_tree, self._dir(handle) / HIBERNATED / "memory", dest / "memory")
            (dest / "upper").mkdir()
            await copy_upper(upper, dest / "upper")
            save_console_end(self._dir(handle), dest)
            return
        check_room(sid, dest, f"sandbox {sid}'s snapshot")
        running = await self._pause_if_running(handle)  # so the memory image and the files agree
        try:
            with host_room(dest, f"sandbox {sid}'s snapshot"):
                await hostcmd.run(
                    self._checkpoint_argv("--leave-running", "--image-path", str(dest / "memory"), sid),
                    timeout=600,
                )
                (dest / "upper").mkdir()
                await copy_upper(upper, dest / "upper")
        finally:
            if running:
                await hostcmd.run(self._runtime_argv("resume", sid), check=False)
        save_console_end(self._dir(handle), dest)  # the saved processes' history, for their copies' consoles

    async def restore(
        self, spec: SandboxSpec, snapshot: Path, *, ready: asyncio.Future[None] | None = None
    ) -> RuntimeHandle:
        self._needs_runsc("restore")

        async def start(sdir: Path) -> None:
            carry_console(snapshot, sdir)
            await self._start(spec.sandbox_id, sdir, "restore", "--image-path", str(snapshot / "memory"))

        async def fill_upper(upper: Path) -> None:
            if ready is not None:
                await asyncio.shield(ready)  # ten copies wait on it: one cancelled must not cancel it
            await copy_upper(snapshot / "upper", upper)

        def memory_limit() -> int:
            # gVisor shows the spec's limit as MemTotal, and the host cgroup holds the sentry to it
            # while the saved memory loads (the wall above it comes after). Saved memory close to
            # the limit gets the wall at once, so that the load is never cut short.
            asked = spec.memory_mb << 20
            if tree_size(snapshot / "memory") + RESTORE_HEADROOM <= asked:
                return asked
            return host_memory_limit(spec.memory_mb)

        return await self._build(spec, start, before_mount=fill_upper, memory_limit=memory_limit)

    async def checkpoint_identity(self) -> str | None:
        if self.kind != "runsc":
            return None
        bundle = await self._prepare()
        binary = Path(self.binary).resolve()
        made = binary.stat().st_mtime_ns
        flags = " ".join(self._runtime_argv()[3:])
        return f"{binary}@{made} {flags} corral {__version__} agent {bundle.name}"

    async def hibernate(self, handle: RuntimeHandle) -> None:
        self._needs_runsc("hibernate")
        saved = self._dir(handle) / HIBERNATED
        what = f"sandbox {handle.sandbox_id}'s memory"
        check_room(handle.sandbox_id, saved, what)  # a save that fails ends the sandbox: see below
        shutil.rmtree(saved, ignore_errors=True)
        saved.mkdir()
        running = await self._pause_if_running(handle)
        # Without --leave-running the sandbox stops once saved; its disk and link stay.
        # It also stops if the save fails midway (gVisor ends it all the same), which
        # check_room() keeps from happening for want of room.
        try:
            with host_room(saved, what):
                argv = self._checkpoint_argv("--image-path", str(saved / "memory"), handle.sandbox_id)
                await hostcmd.run(argv, timeout=600)
        except BaseException:
            shutil.rmtree(saved, ignore_errors=True)  # half an image
            if running:  # should it still be there
                await hostcmd.run(self._runtime_argv("resume", handle.sandbox_id), check=False)
            raise
        # Saved, the sandbox stops: its process exits and its memory is freed. runsc's record of
        # it is deleted in the background, because `runsc delete` returns only once that process
        # is reaped, by the host's init, which some inits do a second or more late. A wake waits
        # for the delete; so does a server that stops before it ends, or the next one finishes it.
        self._delete_later(handle.sandbox_id)

    def _delete_later(self, sandbox_id: str) -> None:
        if sandbox_id not in self._deletes:
            task = asyncio.create_task(self._delete_record(sandbox_id), name=f"corral-delete-{sandbox_id}")
            self._deletes[sandbox_id] = task
            task.add_done_callback(lambda _: self._deletes.pop(sandbox_id, None))

    async def _delete_record(self, sandbox_id: str) -> None:
        """``runsc delete`` of a stopped sandbox's record (it succeeds when there is none)."""
        try:
            out = await hostcmd.run(self._runtime_argv("delete", "--force", sandbox_id), check=False, timeout=30)
        except Exception as exc:  # its timeout
            why = str(exc)
        else:
            if out.returncode == 0:
                self._undeleted.discard(sandbox_id)
                return
            why = out.stderr.strip()[-500:]
        log.warning("sandbox %s: runsc delete of its stopped record failed: %s", sandbox_id, why)
        self._undeleted.add(sandbox_id)

    async def _record_deleted(self, sandbox_id: str) -> None:
        """Wait for :meth:`hibernate`'s background ``runsc delete`` of the sandbox, if one runs."""
        task = self._deletes.get(sandbox_id)
        if task is not None:
            await asyncio.shield(task)

    async def wake(self, handle: RuntimeHandle) -> None:
        self._needs_runsc("wake")
        await self._record_deleted(handle.sandbox_id)
        if handle.sandbox_id in self._undeleted:  # that delete failed: once more, as a restore needs it gone
            await self._delete_record(handle.sandbox_id)
        sdir = self._dir(handle)
        saved = sdir / HIBERNATED
        # gVisor took the interface's address over when it first started; the restored
        # netstack reads it from the namespace again, so the link is made afresh.
        if "slot" in handle.info:
            await self.links.create(handle.sandbox_id, links.network_from_info(handle.info))
        await self._mount_again(handle)
        await self._start(handle.sandbox_id, sdir, "restore", "--image-path", str(saved / "memory"))
        config = json.loads((sdir / "bundle" / "config.json").read_text())
        limit_mb = int(config["linux"]["resources"]["memory"]["limit"]) >> 20
        cgroups.raise_memory_limit(config["linux"]["cgroupsPath"], host_memory_limit(limit_mb))
        shutil.rmtree(saved, ignore_errors=True)

    async def _mount_disk_again(self, sdir: Path) -> None:
        """Mount a stopped sandbox's disk if it is not: the host was restarted since it stopped."""
        disk = sdir / DISK
        if (sdir / DISK_IMAGE).exists() and str(disk.resolve()) not in mount_points():
            await mount_disk(sdir / DISK_IMAGE, disk)
            log.info("sandbox %s: its disk mounted again (the host was restarted)", sdir.name)

    async def _mount_again(self, handle: RuntimeHandle) -> None:
        """Mount a hibernated sandbox's disk and rootfs if they are not: the host was restarted since it slept."""
        sdir = self._dir(handle)
        rootfs = sdir / "rootfs"
        if str(rootfs.resolve()) in mount_points():
            return
        layers = [Path(layer) for layer in handle.info.get("layers") or []]
        if not layers or not all(layer.is_dir() for layer in layers):
            raise RuntimeFailure(
                f"cannot mount sandbox {handle.sandbox_id}'s files again (the host was restarted since it "
                "hibernated): its image layers are not known or gone",
                details={"sandbox_id": handle.sandbox_id},
            )
        await self._mount_disk_again(sdir)
        upper = upper_dir(sdir)
        await asyncio.to_thread(mount_overlay, layers, upper, upper.parent / "work", rootfs)

    async def prepare_link(self, network: NetworkSpec) -> bool:
        await self.links.prepare(network)
        return True

    async def remove_prepared_links(self, subnet: str) -> None:
        await self.links.remove_spares(subnet)

    def _checkpoint_argv(self, *args: str) -> list[str]:
        """``runsc checkpoint``; uncompressed (the default) it saves in half the time, and restores in two thirds."""
        compression = [f"--compression={self.snapshot_compression}"] if self.snapshot_compression else []
        return self._runtime_argv("checkpoint", *compression, *args)

    def _needs_runsc(self, what: str) -> None:
        if self.kind != "runsc":
            raise RuntimeFailure(f"only gVisor (runsc) sandboxes can {what}; this server runs {self.kind}")

    def _dir(self, handle: RuntimeHandle) -> Path:
        return Path(handle.info.get("dir") or self.sandbox_dir(handle.sandbox_id))

    async def logs(self, handle: RuntimeHandle, *, tail: int | None = None) -> str:
        try:
            text = await asyncio.to_thread(read_console, console_path(self._dir(handle)))
        except FileNotFoundError:
            return ""
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        return text

    async def aclose(self) -> None:
        if self._trimming is not None:
            self._trimming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimming
        if self._deletes:  # unfinished, they are finished by the next server (see state())
            await asyncio.wait(list(self._deletes.values()), timeout=5)
        await self.spare_disks.aclose()

    # -- pieces ----------------------------------------------------------------

    async def _mount_rootfs(
        self, sdir: Path, spec: SandboxSpec, *, fill: Callable[[Path], Awaitable[None]] | None = None
    ) -> Path:
        """The sandbox's disk (its own file system of ``spec.disk_mb``, if set), ``fill``-ed, under its image."""
        disk, rootfs = sdir / DISK, sdir / "rootfs"
        disk.mkdir(parents=True, exist_ok=True)
        if spec.disk_mb:
            image = sdir / DISK_IMAGE
            if not await self.spare_disks.take(spec.disk_mb, image, disk):
                await format_disk(image, spec.disk_mb)
                await mount_disk(image, disk)
        upper, work = disk / "upper", disk / "work"
        for d in (upper, work, rootfs):
            d.mkdir(parents=True, exist_ok=True)
        if fill is not None:
            await fill(upper)
        await asyncio.to_thread(mount_overlay, spec.image_layers, upper, work, rootfs)
        tmp = rootfs / "tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)
        net = spec.network
        write_own_files(
            rootfs,
            {
                "hostname": f"{SANDBOX_HOSTNAME}\n",
                "hosts": (
                    f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{net.sandbox_address}\t{SANDBOX_HOSTNAME}\n"
                ),
                # The gateway: DNS to any address is answered by corral's forwarder (corral.net.dns).
                "resolv.conf": f"nameserver {net.host_address}\noptions ndots:0\n",
            },
        )
        return rootfs

    def _oci_config(self, spec: SandboxSpec, rootfs: Path, agent_bundle: Path) -> dict[str, Any]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            **spec.envs,
            **agent_env(),
        }
        if self.kind == "runsc":
            # The agent enforces these inside: see host_limits() for why. Under runc the
            # sandbox's processes are host processes in the spec's cgroup, which enforces
            # them itself; there the agent (as PID 1) would see the host's /proc/meminfo and
            # a host-wide per-uid RLIMIT_NPROC, and kill or refuse processes for the host's use.
            env["CORRAL_AGENT_MEMORY_LIMIT_MB"] = str(spec.memory_mb)
            env["CORRAL_AGENT_PIDS_LIMIT"] = str(spec.pids_limit)
        pids = host_limits(spec)[1] if self.kind == "runsc" else spec.pids_limit
        nofile = open_files_limit(self.kind)
        # gVisor shows the spec's memory limit as MemTotal; the host wall above it is set after start.
        memory = spec.memory_mb << 20
        return {
            "ociVersion": "1.0.2",
            "hostname": SANDBOX_HOSTNAME,
            "root": {"path": str(rootfs), "readonly": False},
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": agent_command(AGENT_PORT),
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": "/",
                "capabilities": {k: CAPABILITIES for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
                "noNewPrivileges": False,
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {
                    "destination": "/dev",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
                },
                {
                    "destination": "/dev/pts",
                    "type": "devpts",
                    "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
                },
                {
                    "destination": "/dev/shm",
                    "type": "tmpfs",
                    "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                },
                {
                    "destination": "/sys",
                    "type": "sysfs",
                    "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"],
                },
                {
                    "destination": "/tmp",
                    "type": "bind",
                    "source": str(rootfs / "tmp"),
                    "options": ["rbind", "rw"],
                },
                {
                    "destination": "/.corral",
                    "type": "bind",
                    "source": str(agent_bundle),
                    "options": ["rbind", "ro"],
                },
            ],
            "linux": {
                "cgroupsPath": cgroups.sandbox_cgroup(spec.sandbox_id),
                "resources": {
                    "memory": {"limit": memory, "swap": memory},
                    "cpu": {"quota": spec.vcpus * CPU_PERIOD_US, "period": CPU_PERIOD_US},
                    "pids": {"limit": pids},
                },
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"},
                    {"type": "network", "path": str(links.netns_path(spec.sandbox_id))},
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
            },
        }

    async def _start(self, sandbox_id: str, sdir: Path, command: str, *options: str) -> None:
        """``run`` (or ``restore``) the sandbox's bundle, detached."""
        argv: Sequence[str] = self._runtime_argv(
            command,
            "--detach" if self.kind == "runc" else "-detach",
            *options,
            "--bundle",
            str(sdir / "bundle"),
            sandbox_id,
        )
        if self.kind == "runsc":
            argv = [
                "unshare",
                "-m",
                "sh",
                "-c",
                'mount -t tmpfs none /proc/sys/net && exec "$0" "$@"',
                *argv,
            ]
        console = console_path(sdir)
        began = time.perf_counter()
        # A detached runtime keeps the stdio it is given for the sandbox's init:
        # a file, never a pipe we would wait on.
        with console.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise RuntimeFailure(f"{self.kind} {command} did not return within 60s") from None
            except asyncio.CancelledError:
                # The caller destroys what was begun: nothing may go on making it meanwhile
                # (a runsc left running would finish the sandbox after that, orphaned).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                raise
        took = 1000 * (time.perf_counter() - began)
        log.debug("%s %s of sandbox %s -> %s in %.1f ms", self.kind, command, sandbox_id, code, took)
        if code != 0:
            lines = read_console(console).strip().splitlines()
            raise RuntimeFailure(
                f"{self.kind} could not {command} sandbox {sandbox_id}: {failure_line(lines) or f'exit {code}'}",
                details={"console": "\n".join(lines[-20:])},
            )


def failure_line(console: list[str]) -> str:
    """The line of a runtime's output that says why it failed: the last one before a Go stack trace."""
    for i, line in enumerate(console):
        if line.startswith(("goroutine ", "panic(")):
            console = console[:i]
            break
    said = [line.strip() for line in console if line.strip()]
    return said[-1].rstrip(":") if said else ""
