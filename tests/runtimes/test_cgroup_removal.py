"""A sandbox's cgroups, removed from every hierarchy of the host's real cgroup tree."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.runtimes import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")


def hierarchies() -> list[Path]:
    """Where cgroups can be made: the v2 root, or each v1 controller's (and a hybrid host's unified) mount."""
    root = cgroups.CGROUP_ROOT
    if (root / "cgroup.procs").exists():
        return [root]
    return [h for h in sorted(root.iterdir()) if (h / "cgroup.procs").exists()]


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"corral-test-{os.getpid()}"
    yield name
    for hierarchy in hierarchies():
        for leftover in sorted((hierarchy / name).glob("*"), reverse=True):
            if leftover.is_dir():
                leftover.rmdir()
        if (hierarchy / name).is_dir():
            (hierarchy / name).rmdir()


def test_every_hierarchy_loses_it_and_one_still_in_use_stays(parent: str) -> None:
    cgroup = f"/{parent}/sbtestcgroups1"
    places = [hierarchy / parent / "sbtestcgroups1" for hierarchy in hierarchies()]
    for place in places:
        place.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    busy = places[-1]
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        assert cgroups.remove(cgroup) == [busy]
        assert [p for p in places if p.exists()] == [busy]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cgroups.remove(cgroup) == []
    assert not any(p.exists() for p in places)
    assert cgroups.remove(cgroup) == []  # nothing left to remove is no error
