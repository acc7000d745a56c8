"""Sandbox disks: a sparse ext4 image per sandbox, and spare ones formatted ahead of time.

Every sandbox's changes live on a disk of its own (its size is the sandbox's
``disk_mb``): a sparse file holding an ext4 file system without a journal,
loop-mounted under the sandbox's overlay. Space is taken as it is written and
given back to the host as files are deleted (``discard``); a sandbox that
fills it gets ENOSPC, nobody else does.

``mkfs.ext4`` costs 13-26 ms on a quiet host and over 150 ms when ten
sandboxes are made at once (a fork), all of it on the way to a sandbox's
first command, and a loop ``mount`` 10-40 ms more. :class:`SpareDisks` keeps
a few images of the usual size formatted and mounted in ``<data>/spare-disks``
(``<name>.img``, mounted on ``mounted/<name>``), about 4 MB of the host's
disk each. A new sandbox takes one by a ``rename`` of the image and a move of
its mount (one ``mount(MS_MOVE)`` call): no command runs on its way.
``mounted/`` is a private bind mount of itself, because the kernel moves no
mount from under a shared one (systemd makes ``/`` shared); the images stay
outside it, as ``rename`` does not cross mounts. Spares are made
one at a time in the background, at low CPU priority, a moment after one was
taken and only while no sandbox is being made (so that they do not compete
with the sandboxes that took them). A spare
holds nothing but an empty file system, so one left by a crash is as good as
new (mounted again if it was not); a half-made one (``*.part``), or a mount
whose image was taken, is removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path

from corral import hostcmd
from corral.activity import Activity, WorkAhead
from corral.mounts import detach_mount, mount_points, move_mount

log = logging.getLogger(__name__)

DISK, DISK_IMAGE = "disk", "disk.img"
"""In a sandbox's dir: ``disk/`` holds its upper and work dirs (and its console), and is ``disk.img``
mounted when the sandbox has a disk size."""

MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard")
"""How every disk is formatted (a spare's name carries :data:`FORMAT` so that a change here retires old spares)."""
FORMAT = 1
REFILL_DELAY = 1.0
"""Seconds after a spare was taken before the next is made: the sandbox that took it gets the CPU first."""


async def format_disk(image: Path, size_mb: int) -> None:
    """A sparse ``size_mb`` MiB file at ``image`` holding an empty ext4 file system."""
    with image.open("wb") as f:
        f.truncate(size_mb << 20)
    await hostcmd.run(["mkfs.ext4", *MKFS_OPTIONS, str(image)])


async def mount_disk(image: Path, mount_point: Path) -> None:
    await hostcmd.run(["mount", "-o", "loop,discard,nosuid,nodev", str(image), str(mount_point)])


class SpareDisks:
    """Up to ``keep`` formatted and mounted images of ``size_mb`` MiB, ready to be moved into a sandbox."""

    def __init__(self, directory: Path, *, size_mb: int, keep: int, activity: Activity | None = None) -> None:
        self.directory = directory
        self.activity = activity or Activity()
        self.size_mb = size_mb
        self.keep = keep if size_mb > 0 else 0
        self.taken = 0
        """Disks handed out from the spares (the rest of the creates formatted their own)."""
        self.mounts = directory / "mounted"
        self._refill = WorkAhead(self._fill, name="corral-spare-disks")
        self._swept = False
        self._private = False
        """Whether ``mounts`` is known to be a private mount (checked once per process)."""

    def _spares(self) -> list[Path]:
        """The spares' images, mounted or not (one whose mount failed is still a formatted disk)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(self.directory.glob(f"spare-{FORMAT}-{self.size_mb}-*.img"))
        return []

    def _sweep(self) -> None:
        """Once: half-made spares, spares of another size or format, and mounts without their image go."""
        if self._swept:
            return
        self._swept = True
        with contextlib.suppress(FileNotFoundError):
            current = set(self._spares())
            for path in self.directory.iterdir():
                if path not in current and path != self.mounts:
                    path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            for mounted in self.mounts.iterdir():
                if self.directory / f"{mounted.name}.img" not in current:
                    with contextlib.suppress(OSError):
                        detach_mount(mounted)
                        mounted.rmdir()

    async def take(self, size_mb: int, image: Path, mount_point: Path) -> bool:
        """Rename a spare of ``size_mb`` MiB to ``image``, mounted on ``mount_point``; ``False`` if there is none."""
        if size_mb != self.size_mb or self.keep == 0:
            return False
        self._sweep()
        taken = None
        for spare in self._spares():
            try:
                os.rename(spare, image)
            except FileNotFoundError:
                continue  # another create took it first
            taken, self.taken = spare, self.taken + 1
            break
        self.refill(delay=REFILL_DELAY)
        if taken is None:
            return False
        mounted = self.mounts / taken.stem
        try:
            if os.path.ismount(mounted):
                await asyncio.to_thread(move_mount, mounted, mount_point)
            else:
                await mount_disk(image, mount_point)
        except OSError:
            log.exception("could not move a spare disk's mount; mounting it again")
            await asyncio.to_thread(detach_mount, mounted)
            await mount_disk(image, mount_point)
        finally:
            with contextlib.suppress(OSError):
                mounted.rmdir()
        return True

    def refill(self, *, delay: float = 0.0) -> None:
        """Make spares up to ``keep`` in the background, unless that is under way already."""
        if self.keep:
            self._refill.start(delay=delay)

    async def _fill(self, delay: float) -> None:
        await self.activity.until_quiet(delay)
        self._sweep()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            if not self._private:
                self.mounts.mkdir(exist_ok=True)
                if str(self.mounts.resolve()) not in mount_points():
                    await hostcmd.run(["mount", "--bind", str(self.mounts), str(self.mounts)])
                await hostcmd.run(["mount", "--make-private", str(self.mounts)])
                self._private = True
                for spare in self._spares():  # left by an earlier run, unmounted by a crash or a reboot
                    await self._mount(spare, spare.stem)
        except Exception:
            log.exception("could not mount the spare disks ahead; creates mount their own")
        while len(self._spares()) < self.keep:
            await self.activity.until_quiet()  # a fork or a burst under way has the CPU first
            token = secrets.token_hex(6)
            part = self.directory / f"spare-{FORMAT}-{self.size_mb}-{token}.part"
            try:
                await format_disk(part, self.size_mb)
                await self._mount(part, part.stem)
                os.rename(part, part.with_suffix(".img"))
            except Exception:
                part.unlink(missing_ok=True)
                log.exception("could not make a spare disk; creates format their own")
                return
            except BaseException:
                part.unlink(missing_ok=True)
                raise

    async def _mount(self, image: Path, name: str) -> None:
        """``image`` mounted on ``mounted/<name>`` (a spare is taken without a command on its way)."""
        mount_point = self.mounts / name
        if os.path.ismount(mount_point):
            return
        mount_point.mkdir(exist_ok=True)
        try:
            await mount_disk(image, mount_point)
        except Exception:
            mount_point.rmdir()
            raise

    async def aclose(self) -> None:
        await self._refill.stop()
