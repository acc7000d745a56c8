"""A snapshot's files checked against its manifest; runsc's reason picked out of its output; leftover host commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.core.lifecycle import check_snapshot_files, image_manifest
from corral.hostcmd import kill_processes_naming
from corral.runtimes.oci import failure_line


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "checkpoint.img").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "upper" / "etc").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps(image_manifest(tmp_path / "memory")))
    return tmp_path


def test_an_intact_snapshot_passes(snapshot: Path) -> None:
    assert check_snapshot_files(snapshot, checksums=False) is None
    assert check_snapshot_files(snapshot, checksums=True) is None


def test_a_truncated_image_is_told_by_its_size(snapshot: Path) -> None:
    image = snapshot / "memory" / "checkpoint.img"
    image.write_bytes(image.read_bytes()[:100])
    assert check_snapshot_files(snapshot, checksums=False) == (
        f"its checkpoint image {image} is 100 bytes, 16384 when it was taken"
    )


def test_changed_bytes_are_told_only_by_the_checksum(snapshot: Path) -> None:
    image = snapshot / "memory" / "checkpoint.img"
    image.write_bytes(b"\xff" * 16384)
    assert check_snapshot_files(snapshot, checksums=False) is None  # the cheap check cannot see it
    assert "has changed since it was taken" in (check_snapshot_files(snapshot, checksums=True) or "")


@pytest.mark.parametrize(
    ("remove", "said"),
    [
        ("memory/checkpoint.img", "its checkpoint image"),
        ("memory", "its checkpoint image"),
        ("upper", "its copy of the sandbox's disk"),
    ],
)
def test_missing_files_are_named(snapshot: Path, remove: str, said: str) -> None:
    subprocess.run(["rm", "-r", str(snapshot / remove)], check=True)
    assert (check_snapshot_files(snapshot, checksums=False) or "").startswith(said)


def test_a_snapshot_from_before_manifests_is_checked_for_its_dirs_only(snapshot: Path) -> None:
    (snapshot / "manifest.json").unlink()
    (snapshot / "memory" / "checkpoint.img").write_bytes(b"short")
    assert check_snapshot_files(snapshot, checksums=True) is None


def test_runscs_reason_comes_before_its_stack_trace() -> None:
    console = [
        'starting container: restoring container "sb1": header error: unexpected EOF:',
        "goroutine 5 [running]:",
        "panic({0x11a24a0?, 0xc0003e0ca0?})",
        "\tgvisor.dev/gvisor/pkg/urpc/urpc.go:451 +0x6b",
    ]
    assert failure_line(console) == 'starting container: restoring container "sb1": header error: unexpected EOF'
    assert failure_line(["agent up", "cannot open bundle: no such file"]) == "cannot open bundle: no such file"
    assert failure_line([]) == ""


def test_leftover_commands_are_killed_by_what_they_name(tmp_path: Path) -> None:
    marker = str(tmp_path / "snapshots") + "/"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    sleeper = subprocess.Popen([*sleep, marker])
    bystander = subprocess.Popen([*sleep, str(tmp_path / "other")])
    try:
        assert kill_processes_naming(marker) == [sleeper.pid]
        assert sleeper.wait(5) == -9
        time.sleep(0.05)
        assert bystander.poll() is None
    finally:
        sleeper.kill()
        bystander.kill()
        bystander.wait(5)
