"""The server's own disk running out of room for a sandbox's saved memory: a clear 507, not runsc's words."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from corral.errors import DiskFull, RuntimeFailure
from corral.runtimes import cgroups, oci


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeFailure("runsc failed: checkpoint failed: statefile error: no space left on device"),
    ],
    ids=["oserror", "runsc"],
)
def test_no_room_on_the_host_is_disk_full(tmp_path: Path, error: Exception) -> None:
    no_room = "the server's disk has no room for sandbox x's memory"
    with pytest.raises(DiskFull, match=no_room) as info, oci.host_room(tmp_path / "hibernated", "sandbox x's memory"):
        raise error
    assert info.value.details is not None and info.value.details["path"] == str(tmp_path)
    assert info.value.__cause__ is error


@pytest.mark.parametrize(
    "error", [OSError(errno.EIO, "I/O error"), RuntimeFailure("runsc failed: checkpoint failed: bad state")]
)
def test_other_failures_pass_unchanged(tmp_path: Path, error: Exception) -> None:
    with pytest.raises(type(error)) as info, oci.host_room(tmp_path, "it"):
        raise error
    assert info.value is error


def test_a_save_larger_than_the_free_room_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(cgroups, "memory_stat", lambda cgroup, key: free if key == "shmem" else None)
    with pytest.raises(DiskFull, match=r"needs about \d+ MiB, \d+ MiB are free") as info:
        oci.check_room("sbx", tmp_path / "snapshots" / "s1.partial", "sandbox sbx's snapshot")
    assert info.value.details is not None and info.value.details["needed_bytes"] == free + oci.SAVE_HEADROOM
    monkeypatch.setattr(cgroups, "memory_stat", lambda cgroup, key: 10 << 20)
    oci.check_room("sbx", tmp_path / "snapshots" / "s1.partial", "sandbox sbx's snapshot")
    monkeypatch.setattr(cgroups, "memory_stat", lambda cgroup, key: None)  # no cgroup: runsc is the judge
    oci.check_room("sbx", tmp_path, "sandbox sbx's snapshot")


@pytest.mark.parametrize("layout", ["memory/corral/sbx", "corral/sbx"], ids=["v1", "v2"])
def test_memory_stat_reads_either_hierarchy(tmp_path: Path, layout: str) -> None:
    (tmp_path / layout).mkdir(parents=True)
    (tmp_path / layout / "memory.stat").write_text("cache 100\nshmem 4096\nrss 7\n")
    assert cgroups.memory_stat("/corral/sbx", "shmem", root=tmp_path) == 4096
    assert cgroups.memory_stat("/corral/sbx", "nothing", root=tmp_path) is None
    assert cgroups.memory_stat("/corral/other", "shmem", root=tmp_path) is None
