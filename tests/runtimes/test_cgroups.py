"""favordynmods on the host's cgroup2 hierarchy: turned on where it is off, left alone where it is on."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import subprocess
from pathlib import Path

import pytest

from corral.runtimes import cgroups
from tests.hostcmds import Ran

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting cgroup2 needs root"),
    pytest.mark.skipif(
        tuple(int(part) for part in platform.release().split(".")[:2]) < (6, 0),
        reason="favordynmods arrived in Linux 6.0",
    ),
]


VFS_OPTIONS = {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "strictatime", "nodiratime", "seclabel"}


def cgroup2_mounts() -> list[tuple[str, list[str]]]:
    """(target, options) of every cgroup2 mount the host has."""
    rows = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    return [(row[1], row[3].split(",")) for row in rows if row[2] == "cgroup2"]


def mounts_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in ("proc /proc proc rw 0 0", *lines)))
    return path


def test_the_hosts_cgroup2_mount_is_remounted_with_it_and_keeps_its_options(tmp_path: Path, ran: list[Ran]) -> None:
    found = cgroup2_mounts()
    if not found:
        pytest.skip("this host has no cgroup2 mount")
    target, before = found[0]
    kept = [option for option in before if option != "favordynmods"]
    # As /proc/mounts shows it before the server's first start on a fresh host.
    table = mounts_file(tmp_path, f"cgroup2 {target} cgroup2 {','.join(kept)} 0 0")
    asyncio.run(cgroups.favor_moves(tmp_path / "own", mounts=table))
    assert [r.argv for r in ran] == [["mount", "-o", f"remount,{','.join(kept)},favordynmods", target]]
    after = dict(cgroup2_mounts())[target]
    assert set(after) == {*kept, "favordynmods"}
    assert not (tmp_path / "own").exists()


def test_nothing_is_run_when_it_is_on(tmp_path: Path, ran: list[Ran]) -> None:
    table = mounts_file(tmp_path, "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,relatime,nsdelegate,favordynmods 0 0")
    asyncio.run(cgroups.favor_moves(tmp_path / "own", mounts=table))
    assert ran == []


def test_a_host_without_cgroup2_gets_a_mount_of_its_own(tmp_path: Path, ran: list[Ran]) -> None:
    # A new cgroup2 mount sets the one hierarchy's flags to its own options: where the host's
    # mount has others (nsdelegate, memory_recursiveprot...), this test would take them away.
    hierarchy_flags = {o for _, options in cgroup2_mounts() for o in options if o not in VFS_OPTIONS}
    if hierarchy_flags - {"favordynmods"}:
        pytest.skip(f"the host's cgroup2 hierarchy has flags a new mount would clear: {sorted(hierarchy_flags)}")
    own = tmp_path / "cgroup2"
    table = mounts_file(tmp_path, "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0")
    try:
        asyncio.run(cgroups.favor_moves(own, mounts=table))
        assert [r.argv for r in ran] == [["mount", "-t", "cgroup2", "-o", "favordynmods", "cgroup2", str(own)]]
        assert "favordynmods" in dict(cgroup2_mounts())[str(own)]
        assert (own / "cgroup.procs").is_file()
    finally:
        subprocess.run(["umount", str(own)], check=False)


def test_a_refused_mount_is_logged_and_the_server_goes_on(
    tmp_path: Path, ran: list[Ran], caplog: pytest.LogCaptureFixture
) -> None:
    not_a_mount = tmp_path / "plain-directory"
    not_a_mount.mkdir()
    table = mounts_file(tmp_path, f"cgroup2 {not_a_mount} cgroup2 rw,relatime 0 0")
    with caplog.at_level(logging.INFO, logger="corral.runtimes.cgroups"):
        asyncio.run(cgroups.favor_moves(tmp_path / "own", mounts=table))
    assert len(ran) == 1
    assert "favordynmods is not available" in caplog.text
