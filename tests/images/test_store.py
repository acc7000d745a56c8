"""The image store under faults: interrupted pulls and a full disk leave it consistent."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RuntimeFailure
from corral.images.pull import Progress, Puller, _unpack_error
from corral.images.store import ImageStore
from tests.registry import Layer, Registry, busybox_layer, write_layout

pytestmark = [pytest.mark.xdist_group("images")]


def leftovers(store: ImageStore) -> list[Path]:
    return [*store.tmp_dir.iterdir(), *store.layers_dir.iterdir(), *store.manifests_dir.iterdir()]


def test_a_cancelled_pull_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    layout = tmp_path / "big"
    write_layout(layout, {"linux/amd64": [busybox_layer(), Layer({"blob": bytes(64 << 20)})]})
    ref = registry.push(layout, "tests/cancelled")
    store = ImageStore(tmp_path / "data")

    async def pull_then_cancel() -> None:
        downloading = asyncio.Event()

        def seen(progress: Progress) -> None:
            if progress.phase == "downloading":
                downloading.set()

        task = asyncio.create_task(Puller(store).pull(ref, on_progress=seen))
        await asyncio.wait_for(downloading.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(pull_then_cancel())
    assert leftovers(store) == []
    assert store.lookup(ref) is None
    assert subprocess.run(["pgrep", "-f", f"skopeo copy.*{ref}"], capture_output=True).returncode == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_unpacking_is_a_clear_error_and_the_store_stays_consistent(
    registry: Registry, tmp_path: Path, small_disk: Path
) -> None:
    layout = tmp_path / "zeros"
    # 16 MiB of zeros: tiny to download (it compresses), too big to unpack on 3 MiB.
    write_layout(layout, {"linux/amd64": [busybox_layer(), Layer({"zeros": bytes(16 << 20)})]})
    ref = registry.push(layout, "tests/zeros")
    store = ImageStore(small_disk)
    with pytest.raises(RuntimeFailure) as info:
        asyncio.run(Puller(store).pull(ref))
    assert "unpacking" in info.value.message and "no space left on device" in info.value.message
    assert leftovers(store) == []
    assert store.lookup(ref) is None
    assert store.list_images(all_images=True) == []


GO_CRASH = """\
panic: runtime error: invalid memory address or nil pointer dereference
[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x5a1b2c]

goroutine 1 [running]:
main.main()
\tgithub.com/opencontainers/umoci/cmd/umoci/main.go:172 +0x32
"""


def test_an_unpack_that_crashed_is_reported_by_its_reason_and_a_full_disk_by_name(
    tmp_path: Path, small_disk: Path
) -> None:
    assert _unpack_error(GO_CRASH, tmp_path) == GO_CRASH.splitlines()[0]
    killed = "SIGQUIT: quit\nPC=0x46b2a1 m=0 sigcode=0\n\ngoroutine 1 [running]:\nmain.main()\n"
    assert _unpack_error(killed, tmp_path) == "SIGQUIT: quit"
    umoci_error = "   \u2022 unpacking rootfs ...\n   \u2a2f create rootfs: unpack layer: no space left on device\n"
    assert _unpack_error(umoci_error, tmp_path) == "create rootfs: unpack layer: no space left on device"
    with (small_disk / "filler").open("wb") as filler, contextlib.suppress(OSError):
        filler.write(bytes(8 << 20))  # more than the 3 MiB disk holds
    reason = _unpack_error(GO_CRASH, small_disk)
    assert reason.startswith(f"no space left on device in {small_disk}") and "panic: runtime error" in reason


def test_work_a_dead_process_left_is_swept_and_live_work_is_kept(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    live = store.work_dir("pull-live")  # ours: this process is alive
    dead_pid = _dead_pid()
    dead = store.tmp_dir / f"pull-abc-{dead_pid}-deadbeef"
    (dead / "rootfs").mkdir(parents=True)
    stray = store.tmp_dir / "no-pid-at-all"
    stray.mkdir()
    store.sweep_tmp()
    assert live.exists() and not dead.exists() and not stray.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
