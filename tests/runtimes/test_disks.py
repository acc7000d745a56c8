"""Spare sandbox disks: formatted and mounted ahead with the real mkfs.ext4 and mount, taken by rename and a move."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from corral import hostcmd
from corral.runtimes import disks
from corral.runtimes.disks import FORMAT, SpareDisks, mount_disk
from tests.serverproc import unmount_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


async def wait_for(spares: SpareDisks, count: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(list(spares.directory.glob("*.img"))) < count:
        assert asyncio.get_running_loop().time() < deadline, list(spares.directory.iterdir())
        await asyncio.sleep(0.05)


def run_and_unmount(scenario: Coroutine[Any, Any, None], tmp_path: Path) -> None:
    """Run a scenario; whatever it left mounted under ``tmp_path`` is unmounted after, pass or fail."""
    try:
        asyncio.run(scenario)
    finally:
        unmount_under(tmp_path)


def mounted_spares(spares: SpareDisks) -> list[str]:
    return sorted(p.name for p in spares.mounts.glob("*") if os.path.ismount(p))


def test_spares_are_made_mounted_taken_and_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disks, "REFILL_DELAY", 0.0)
    spares = SpareDisks(tmp_path / "spare-disks", size_mb=64, keep=2)

    async def scenario() -> None:
        spares.refill()
        await wait_for(spares, 2)
        assert mounted_spares(spares) == sorted(p.stem for p in spares.directory.glob("*.img"))
        # a private mount of its own (once), so that mounts can move out of it
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert points.count(str(spares.mounts)) == 1
        dest, mount_point = tmp_path / "disk.img", tmp_path / "mnt"
        mount_point.mkdir()
        assert await spares.take(64, dest, mount_point) and spares.taken == 1
        assert not await spares.take(32, tmp_path / "other.img", tmp_path)  # another size: the caller formats its own
        assert len(list(spares.directory.glob("*.img"))) == 1 and len(mounted_spares(spares)) == 1
        await wait_for(spares, 2)  # made again in the background
        try:
            assert os.path.ismount(mount_point)
            st = os.statvfs(mount_point)
            assert 50 << 20 < st.f_blocks * st.f_frsize <= 64 << 20
            assert sorted(os.listdir(mount_point)) == ["lost+found"]  # empty: nothing of anyone else's
            (mount_point / "file").write_text("written")
        finally:
            await hostcmd.run(["umount", str(mount_point)])
        assert dest.stat().st_blocks * 512 < 16 << 20  # sparse: a spare costs a few MB
        await mount_disk(dest, mount_point)  # the file system is in the image it was renamed to
        try:
            assert (mount_point / "file").read_text() == "written"
        finally:
            await hostcmd.run(["umount", str(mount_point)])
        await spares.aclose()

    run_and_unmount(scenario(), tmp_path)


def test_a_spare_not_mounted_is_mounted_again_or_taken_by_a_mount(tmp_path: Path) -> None:
    """A spare left unmounted (a reboot, a failed mount) is still a formatted disk."""
    directory = tmp_path / "spare-disks"
    directory.mkdir()
    image = directory / f"spare-{FORMAT}-64-abc.img"

    async def scenario() -> None:
        await disks.format_disk(image, 64)
        spares = SpareDisks(directory, size_mb=64, keep=1)
        dest, mount_point = tmp_path / "disk.img", tmp_path / "mnt"
        mount_point.mkdir()
        assert await spares.take(64, dest, mount_point)  # no mount to move: mounted on the way
        assert os.path.ismount(mount_point) and sorted(os.listdir(mount_point)) == ["lost+found"]
        await hostcmd.run(["umount", str(mount_point)])
        await spares.aclose()
        await disks.format_disk(image, 64)
        again = SpareDisks(directory, size_mb=64, keep=1)
        again.refill()
        await wait_for(again, 1)
        deadline = asyncio.get_running_loop().time() + 30
        while mounted_spares(again) != [image.stem]:
            assert asyncio.get_running_loop().time() < deadline, list(directory.iterdir())
            await asyncio.sleep(0.05)
        await again.aclose()

    run_and_unmount(scenario(), tmp_path)


def test_leftovers_and_old_formats_are_swept(tmp_path: Path) -> None:
    directory = tmp_path / "spare-disks"
    directory.mkdir()
    half_made = directory / f"spare-{FORMAT}-64-abc.part"
    old_format = directory / f"spare-{FORMAT - 1}-64-abc.img"
    other_size = directory / f"spare-{FORMAT}-128-abc.img"
    orphan_mount = directory / "mounted" / f"spare-{FORMAT}-64-taken"  # its image went to a sandbox, then a crash
    for path in (half_made, old_format, other_size):
        path.write_bytes(b"")
    orphan_mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(orphan_mount)], check=True)
    spares = SpareDisks(directory, size_mb=64, keep=1)

    async def scenario() -> None:
        assert not await spares.take(64, tmp_path / "disk.img", tmp_path)  # none ready yet
        assert not any(p.exists() for p in (half_made, old_format, other_size, orphan_mount))
        await wait_for(spares, 1)
        await spares.aclose()

    run_and_unmount(scenario(), tmp_path)


def test_no_spares_when_switched_off(tmp_path: Path) -> None:
    spares = SpareDisks(tmp_path / "spare-disks", size_mb=64, keep=0)

    async def scenario() -> None:
        spares.refill()
        assert not await spares.take(64, tmp_path / "disk.img", tmp_path)
        await asyncio.sleep(0.05)
        assert not (tmp_path / "spare-disks").exists()
        await spares.aclose()

    asyncio.run(scenario())
