"""The agent bundle's read-only host mount (made once, however often a server starts), and earlier bundles pruned."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from corral.images.agent_bundle import MOUNT_POINT, prune_agent_bundles
from corral.runtimes.oci import seal_read_only
from tests.leftovers import mounts_under
from tests.serverproc import unmount_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def make_bundle(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "python3").write_text("#!")
    return path


def mounted_by(sandboxes: Path, sandbox_id: str, bundle: Path) -> None:
    """A sandbox directory whose OCI spec mounts ``bundle`` as the agent's."""
    config = sandboxes / sandbox_id / "bundle" / "config.json"
    config.parent.mkdir(parents=True)
    mounts = [{"destination": "/tmp", "source": "/x"}, {"destination": MOUNT_POINT, "source": str(bundle)}]
    config.write_text(json.dumps({"mounts": mounts}))


def test_sealing_twice_leaves_one_read_only_mount(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "agent-bundle")
    try:
        for _ in range(3):  # three server starts
            asyncio.run(seal_read_only(bundle))
        assert mounts_under(bundle) == [str(bundle)]
        with pytest.raises(OSError) as refused:
            (bundle / "python3").write_text("truncated")
        assert refused.value.errno == errno.EROFS
        assert (bundle / "python3").read_text() == "#!"
    finally:
        unmount_under(tmp_path)
    assert mounts_under(bundle) == []


def test_earlier_bundles_go_once_no_sandbox_uses_them(tmp_path: Path) -> None:
    agents, sandboxes = tmp_path / "agent", tmp_path / "sandboxes"
    current, used, unused, stacked = (make_bundle(agents / f"agent-{n}") for n in ("cur", "used", "old1", "old2"))
    mounted_by(sandboxes, "sbhibernated", used)
    mounted_by(sandboxes, "sbnew", current)
    (sandboxes / "sbkilled").mkdir()  # its spec already gone
    try:
        for bundle in (current, used, unused):
            asyncio.run(seal_read_only(bundle))
        for _ in range(3):  # as servers before the fix stacked them
            subprocess.run(["mount", "--bind", "-o", "ro", str(stacked), str(stacked)], check=True)
        assert prune_agent_bundles(current, sandboxes) == [unused, stacked]
        assert sorted(agents.iterdir()) == [current, used]
        assert mounts_under(agents) == [str(current), str(used)]
        assert prune_agent_bundles(current, sandboxes) == []
    finally:
        unmount_under(tmp_path)


def test_a_spec_that_cannot_be_read_keeps_every_bundle(tmp_path: Path) -> None:
    agents, sandboxes = tmp_path / "agent", tmp_path / "sandboxes"
    current, old = make_bundle(agents / "agent-cur"), make_bundle(agents / "agent-old")
    broken = sandboxes / "sbbroken" / "bundle" / "config.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    assert prune_agent_bundles(current, sandboxes) == []
    assert old.is_dir()
