"""Spare sandbox disks: formatted ahead with the real mkfs.ext4, taken by rename, mounted for real."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from corral import hostcmd
from corral.runtimes import disks
from corral.runtimes.disks import FORMAT, SpareDisks, mount_disk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


async def wait_for(spares: SpareDisks, count: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(list(spares.directory.glob("*.img"))) < count:
        assert asyncio.get_running_loop().time() < deadline, list(spares.directory.iterdir())
        await asyncio.sleep(0.05)


def test_spares_are_made_taken_mounted_and_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disks, "REFILL_DELAY", 0.0)
    spares = SpareDisks(tmp_path / "spare-disks", size_mb=64, keep=2)

    async def scenario() -> None:
        spares.refill()
        await wait_for(spares, 2)
        dest = tmp_path / "disk.img"
        assert spares.take(64, dest) and spares.taken == 1
        assert not spares.take(32, tmp_path / "other.img")  # another size: the caller formats its own
        assert len(list(spares.directory.glob("*.img"))) == 1
        await wait_for(spares, 2)  # made again in the background
        mount_point = tmp_path / "mnt"
        mount_point.mkdir()
        await mount_disk(dest, mount_point)
        try:
            st = os.statvfs(mount_point)
            assert 50 << 20 < st.f_blocks * st.f_frsize <= 64 << 20
            assert sorted(os.listdir(mount_point)) == ["lost+found"]  # empty: nothing of anyone else's
            (mount_point / "file").write_text("written")
        finally:
            await hostcmd.run(["umount", str(mount_point)])
        assert dest.stat().st_blocks * 512 < 16 << 20  # sparse: a spare costs a few MB
        await spares.aclose()

    asyncio.run(scenario())


def test_leftovers_and_old_formats_are_swept(tmp_path: Path) -> None:
    directory = tmp_path / "spare-disks"
    directory.mkdir()
    half_made = directory / f"spare-{FORMAT}-64-abc.part"
    old_format = directory / f"spare-{FORMAT - 1}-64-abc.img"
    other_size = directory / f"spare-{FORMAT}-128-abc.img"
    for path in (half_made, old_format, other_size):
        path.write_bytes(b"")
    spares = SpareDisks(directory, size_mb=64, keep=1)

    async def scenario() -> None:
        assert not spares.take(64, tmp_path / "disk.img")  # none ready yet
        assert not any(p.exists() for p in (half_made, old_format, other_size))
        await wait_for(spares, 1)
        await spares.aclose()

    asyncio.run(scenario())


def test_no_spares_when_switched_off(tmp_path: Path) -> None:
    spares = SpareDisks(tmp_path / "spare-disks", size_mb=64, keep=0)

    async def scenario() -> None:
        spares.refill()
        assert not spares.take(64, tmp_path / "disk.img")
        await asyncio.sleep(0.05)
        assert not (tmp_path / "spare-disks").exists()
        await spares.aclose()

    asyncio.run(scenario())
