"""Snapshots and restores when things go wrong, against real gVisor.

A damaged snapshot, a snapshot taken while a process writes, and a server
killed (SIGKILL) in the middle of a snapshot or of a restore: each must end
with a clear answer, consistent files, and nothing left behind on the host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import Sandbox
from tests.envelope import envelope_error
from tests.leftovers import assert_nothing_left, processes_naming, sandbox_ids_in
from tests.serverproc import ServerProcess, unmount_under, worker_index

pytestmark = [pytest.mark.runsc, pytest.mark.checkpoint]

WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    os.write(fd, b"%08d %s\\n" % (n, b"x" * 100))
    os.fsync(fd)
    n += 1
"""
"""Appends numbered 110-byte lines, one write each, as fast as it can.

Each is synced: gVisor would otherwise keep recent writes in its own memory, and
a copy of the disk taken at the wrong moment would still look right.
"""


HOG = 'python3 -c \'import os, time; x = os.urandom(768 << 20); open("/tmp/hog-ready", "w"); time.sleep(1000)\''
"""Holds 768 MiB that compress to nothing less: a checkpoint of it takes seconds."""


def check_sequence(text: str) -> int:
    """How many lines ``text`` holds, after checking they are 0, 1, 2... and whole (a last one may be cut)."""
    lines = text.split("\n")
    last = lines.pop()  # after the final newline: empty, or a line being written
    for i, line in enumerate(lines):
        assert line == f"{i:08d} {'x' * 100}", f"line {i} is {line[:40]!r}..."
    assert f"{len(lines):08d} {'x' * 100}".startswith(last), f"the cut last line is {last[:40]!r}"
    return len(lines)


def wait_for(what: str, found: Callable[[], Any], timeout: float = 30.0, every: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := found()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(every)
    return value


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[object]]:
    """``call`` in a thread; its answer (or the exception it raised) lands in the list."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


# -- a damaged snapshot ----------------------------------------------------------


@pytest.fixture
def snapshot_of(sandbox_factory: Callable[..., Any], server: ServerProcess) -> Iterator[Callable[[], tuple[str, Path]]]:
    """Takes a snapshot of a fresh sandbox; answers its id and its dir. All are deleted afterwards."""
    taken: list[str] = []

    def take() -> tuple[str, Path]:
        sbx: Sandbox = sandbox_factory()
        sbx.commands.run("sleep 1000", background=True)
        snap = sbx.snapshot()
        taken.append(snap.id)
        return snap.id, server.data_dir / "snapshots" / snap.id

    yield take
    for snapshot_id in taken:
        httpx.delete(f"{server.url}/v1/snapshots/{snapshot_id}", timeout=30)


def truncate_image(snapshot_dir: Path) -> None:
    image = snapshot_dir / "memory" / "checkpoint.img"
    os.truncate(image, image.stat().st_size // 2)


def garble_image(snapshot_dir: Path) -> None:
    image = snapshot_dir / "memory" / "checkpoint.img"
    with image.open("r+b") as f:  # same size, other bytes
        f.seek(image.stat().st_size // 3)
        f.write(os.urandom(4096))


def remove_upper(snapshot_dir: Path) -> None:
    import shutil

    shutil.rmtree(snapshot_dir / "upper")


@pytest.mark.parametrize("damage", [truncate_image, garble_image, remove_upper], ids=lambda f: f.__name__)
def test_restoring_a_damaged_snapshot_fails_cleanly(
    damage: Callable[[Path], None],
    snapshot_of: Callable[[], tuple[str, Path]],
    server: ServerProcess,
    request: pytest.FixtureRequest,
) -> None:
    snapshot_id, snapshot_dir = snapshot_of()
    damage(snapshot_dir)
    before = {s["id"] for s in httpx.get(f"{server.url}/v1/sandboxes", timeout=30).json()["sandboxes"]}
    log_start = len(server.log_path.read_text(errors="replace"))

    r = httpx.post(f"{server.url}/v1/sandboxes", json={"snapshot": snapshot_id}, timeout=120)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "snapshot_unusable", error
    assert snapshot_id in error["message"] and "take a new snapshot" in error["message"], error
    assert error["details"]["snapshot_id"] == snapshot_id
    # The store says so too, and the next attempt answers the same.
    info = httpx.get(f"{server.url}/v1/snapshots/{snapshot_id}", timeout=30).json()
    assert info["state"] == "failed" and info["error"], info
    again = httpx.post(f"{server.url}/v1/sandboxes", json={"snapshot": snapshot_id}, timeout=120)
    assert again.status_code == 409 and again.json()["error"]["code"] == "snapshot_unusable", again.text

    # Nothing half-made: no new row, and no process, mount, namespace or dir of a sandbox begun for it.
    after = httpx.get(f"{server.url}/v1/sandboxes", timeout=30).json()["sandboxes"]
    assert [s for s in after if s["id"] not in before and s["state"] != "dead"] == []
    begun = sandbox_ids_in(server.log_path.read_text(errors="replace")[log_start:]) - before
    if damage is garble_image:  # only runsc can tell: a sandbox was begun, and removed
        assert begun, "the log names no sandbox begun for the restore"
    else:  # missing files and a changed size are refused before any sandbox is begun
        assert begun == set()
    assert_nothing_left(server.data_dir, begun)

    # The server goes on serving, snapshots and restores included.
    good_id, _ = snapshot_of()
    restored = Sandbox.create(snapshot=good_id, url=server.url, metadata={"test": request.node.name[:200]})
    try:
        assert restored.commands.run("pgrep -x sleep >/dev/null && echo restored").stdout == "restored\n"
    finally:
        restored.kill()
        restored.close()


# -- a snapshot while a process writes -------------------------------------------


def test_snapshot_while_a_process_appends_keeps_the_file_consistent(
    sandbox_factory: Callable[..., Any], corral_url: str, server: ServerProcess
) -> None:
    sbx: Sandbox = sandbox_factory()
    sbx.files.write("/home/user/writer.py", WRITER)
    sbx.commands.run("python3 /home/user/writer.py /home/user/seq.txt", background=True)
    wait_for("the writer's first lines", lambda: sbx.files.exists("/home/user/seq.txt"), every=0.05)
    time.sleep(0.5)
    snap = sbx.snapshot()
    # The disk's copy was taken while the writer was frozen: whole lines only.
    copied = (server.data_dir / "snapshots" / snap.id / "upper" / "home" / "user" / "seq.txt").read_text()
    assert check_sequence(copied) > 0 and copied.endswith("\n")

    restored: Sandbox = sandbox_factory(snapshot=snap.id)
    first = check_sequence(restored.files.read("/home/user/seq.txt"))
    assert first > 100  # it wrote for a while before the snapshot
    # The restored writer goes on where its memory says it was: no gap, no line twice.
    later = wait_for(
        "the restored writer's next lines",
        lambda: (n := check_sequence(restored.files.read("/home/user/seq.txt"))) > first + 100 and n,
        every=0.1,
    )
    assert later > first + 100
    assert check_sequence(sbx.files.read("/home/user/seq.txt")) > 0  # the original goes on too, unharmed
    Sandbox.delete_snapshot(snap.id, url=corral_url)


# -- the server killed in the middle ---------------------------------------------


def snapshot_rows(server: ServerProcess, sandbox_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = httpx.get(
        f"{server.url}/v1/snapshots", params={"sandbox_id": sandbox_id}, timeout=30
    ).json()["snapshots"]
    return rows


@pytest.mark.parametrize("moment", ["row", "checkpoint", "copy"])
@pytest.mark.timeout(400)  # its own waits allow 120 s to write the 1.5 GiB file and 60 s for the copy
def test_server_killed_during_a_snapshot(own_server: ServerProcess, moment: str) -> None:
    """``row``: once the snapshot is recorded as ``creating``; ``checkpoint``: while runsc writes its
    image; ``copy``: while the disk's upper dir is copied.

    For ``checkpoint`` the sandbox holds 768 MiB of random bytes, for ``copy`` a
    1.5 GiB file, so that the work outlasts the server's restart: the restarted
    server finds it still going (gVisor finishes a save its client no longer
    waits for; a ``cp`` would go on writing into a dir that is to be removed).
    """
    sbx = Sandbox.create(url=own_server.url, memory_mb=2048)
    sbx.files.write("/home/user/writer.py", WRITER)
    sbx.commands.run("python3 /home/user/writer.py /home/user/seq.txt", background=True)
    if moment == "checkpoint":
        sbx.commands.run(HOG, background=True)
        wait_for("the memory hog", lambda: sbx.files.exists("/tmp/hog-ready"), every=0.1)
    elif moment == "copy":
        sbx.commands.run("head -c 1536M /dev/urandom > /home/user/big", timeout=120)
    snapshots = own_server.data_dir / "snapshots"
    thread, answer = in_background(
        lambda: httpx.post(f"{own_server.url}/v1/sandboxes/{sbx.id}/snapshots", json={}, timeout=60)
    )
    if moment == "row":
        wait_for("a snapshot row", lambda: snapshot_rows(own_server, sbx.id), every=0.01)
    elif moment == "checkpoint":
        wait_for("runsc checkpoint writing", lambda: list(snapshots.glob("*.partial/memory")))
    else:
        # a 1.5 GiB file is no small tree: a cp copies it, into <id>.partial/upper
        wait_for("the copy of the disk", lambda: processes_naming(".partial/upper"), timeout=60)
    own_server.kill9()
    thread.join(10)
    assert answer and isinstance(answer[0], httpx.TransportError), f"the snapshot finished first: {answer}"

    if moment != "row":  # the kill must have come while there was still work to do
        assert processes_naming(str(snapshots)), "the work was over before the server was killed"
    own_server.start()
    rows = snapshot_rows(own_server, sbx.id)
    assert [(r["state"], bool(r["error"])) for r in rows] == [("failed", True)], rows
    assert not snapshots.is_dir() or list(snapshots.iterdir()) == []  # no partial snapshot dir
    assert_nothing_left(own_server.data_dir, set())  # no runsc checkpoint or copy still at work
    # The sandbox it was taken of runs on, unfrozen, its writer still writing in sequence.
    again = Sandbox.connect(sbx.id, url=own_server.url)
    assert again.info().state == "running"
    count = check_sequence(again.files.read("/home/user/seq.txt"))
    wait_for("more lines", lambda: check_sequence(again.files.read("/home/user/seq.txt")) > count, every=0.1)
    # And snapshots work again.
    assert again.snapshot().state == "ready"


def test_server_killed_during_a_restore(own_server: ServerProcess) -> None:
    url = own_server.url
    source = Sandbox.create(url=url)
    source.commands.run("sleep 1000", background=True)
    snap = source.snapshot()
    sandboxes = own_server.data_dir / "sandboxes"

    def restore_begun() -> list[str]:
        made = sandboxes.glob("sb*")  # a boot snapshot's hidden sandbox (bt*) is not the restore
        return [d.name for d in made if d.name != source.id and (d / "bundle" / "config.json").exists()]

    thread, answer = in_background(lambda: httpx.post(f"{url}/v1/sandboxes", json={"snapshot": snap.id}, timeout=60))
    (restoring,) = wait_for("runsc restore starting", restore_begun)
    own_server.kill9()
    thread.join(10)
    assert answer and isinstance(answer[0], httpx.TransportError), f"the restore finished first: {answer}"

    own_server.start()
    listed = {s.id: s.state for s in Sandbox.list(url=url)}
    assert restoring not in listed or listed[restoring] == "dead", listed
    assert listed[source.id] == "running"
    # What the restore had begun is gone once the server is back.
    assert_nothing_left(own_server.data_dir, {restoring})
    # The snapshot is untouched and restores.
    restored = Sandbox.create(snapshot=snap.id, url=url)
    assert restored.commands.run("pgrep -x sleep >/dev/null && echo restored").stdout == "restored\n"


@pytest.mark.parametrize("moment", ["checkpoint", "restores"])
def test_server_killed_during_a_fork(own_server: ServerProcess, moment: str) -> None:
    """``checkpoint``: while the parent is frozen and saved; ``restores``: while its children are being made."""
    url = own_server.url
    parent = Sandbox.create(url=url)
    parent.files.write("/home/user/writer.py", WRITER)
    parent.commands.run("python3 /home/user/writer.py /home/user/seq.txt", background=True)
    log_start = len(own_server.log_path.read_text(errors="replace"))
    thread, answer = in_background(
        lambda: httpx.post(f"{url}/v1/sandboxes/{parent.id}/fork", json={"count": 3}, timeout=60)
    )
    sandboxes, begun = own_server.data_dir / "sandboxes", set()
    if moment == "checkpoint":
        wait_for("runsc checkpoint writing", lambda: list((own_server.data_dir / "snapshots").glob(".fork-*/memory")))
    else:
        begun = wait_for(
            "a child's runsc restore", lambda: {d.parent.name for d in sandboxes.glob("sb*/bundle")} - {parent.id}
        )
    own_server.kill9()
    thread.join(10)
    assert answer and isinstance(answer[0], httpx.TransportError), f"the fork finished first: {answer}"

    own_server.start()
    assert [s.id for s in Sandbox.list(url=url)] == [parent.id]  # no child half-made
    assert list((own_server.data_dir / "snapshots").iterdir()) == []  # its work dir is gone
    children = begun | sandbox_ids_in(own_server.log_path.read_text(errors="replace")[log_start:]) - {parent.id}
    if moment == "restores":
        assert children, "the log names no child begun"
    assert_nothing_left(own_server.data_dir, children)
    again = Sandbox.connect(parent.id, url=url)  # thawed, its writer going on
    assert again.info().state == "running"
    count = check_sequence(again.files.read("/home/user/seq.txt"))
    wait_for("more lines", lambda: check_sequence(again.files.read("/home/user/seq.txt")) > count, every=0.1)


def test_a_fork_whose_checkpoint_fails_removes_its_copies(own_server: ServerProcess) -> None:
    """The copies' disks and links are made while the checkpoint is written: when it fails, they go."""
    url = own_server.url
    parent = Sandbox.create(url=url)
    log_start = len(own_server.log_path.read_text(errors="replace"))
    for found in processes_naming(parent.id):  # its gVisor gone under the server: nothing to checkpoint
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(found.split(":")[0]), signal.SIGKILL)
    answer = httpx.post(f"{url}/v1/sandboxes/{parent.id}/fork", json={"count": 3}, timeout=60)
    error = envelope_error(answer.status_code, answer.headers["content-type"], answer.content)
    assert error["code"] == "runtime_error" and parent.id in error["message"], error
    log = own_server.log_path.read_text(errors="replace")[log_start:]
    children = sandbox_ids_in(log) - {parent.id}
    assert len(children) == 3, f"the three copies were not begun beside the checkpoint: {log[-2000:]}"
    assert [s.id for s in Sandbox.list(url=url) if s.id != parent.id] == []
    assert_nothing_left(own_server.data_dir, children)
    assert not [p for p in (own_server.data_dir / "snapshots").iterdir()], "the fork's work dir is gone"


# -- a server whose disk is too small -----------------------------------------------


@pytest.fixture
def cramped_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose data dir is a file system of 200 MiB of its own."""
    room = tmp_path / "room"
    room.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(room)], check=True)
    try:
        env = {"CORRAL_SPARE_DISKS": "1", "CORRAL_SPARE_LINKS": "1"}
        with ServerProcess(room / "data", subnet_index=42 + worker_index(), env=env).running() as proc:
            yield proc
    finally:
        unmount_under(room)
        subprocess.run(["umount", "-l", str(room)], check=False)


def test_a_save_the_servers_disk_has_no_room_for_is_refused_and_the_sandbox_goes_on(
    cramped_server: ServerProcess,
) -> None:
    """A snapshot, fork or hibernate of more memory than the data dir has room for: 507
    disk_full before anything is written. A hibernate whose save failed midway left its
    sandbox frozen (every later call hung) and its half-written image on the disk."""
    url = cramped_server.url
    sbx = Sandbox.create(url=url, memory_mb=512, auto_pause=2)
    sbx.commands.run(HOG.replace("768", "250"), background=True)
    wait_for("the hog's memory", lambda: sbx.files.exists("/tmp/hog-ready"), timeout=60, every=0.2)
    for what, path, body in (
        ("snapshot", "snapshots", {}),
        ("fork", "fork", {"count": 2}),
        ("hibernate", "hibernate", None),
    ):
        answer = httpx.post(f"{url}/v1/sandboxes/{sbx.id}/{path}", json=body, timeout=60)
        error = envelope_error(answer.status_code, answer.headers["content-type"], answer.content)
        assert answer.status_code == 507 and error["code"] == "disk_full", (what, error)
        assert "the server's disk has no room" in error["message"], error
        assert error["details"]["needed_bytes"] > 250 << 20 > error["details"]["free_bytes"], error
        assert sbx.get_info().state == "running", what
        assert sbx.commands.run("pgrep -c python3").stdout == "1\n", what
    assert [s.id for s in Sandbox.list(url=url)] == [sbx.id]
    assert [p.name for p in (cramped_server.data_dir / "snapshots").iterdir()] == []
    assert not (cramped_server.data_dir / "sandboxes" / sbx.id / "hibernated").exists()
    # Idle past its auto_pause: the reaper's hibernate is refused too, and tried again only
    # once the sandbox has been idle that long once more (not at every round, the others skipped).
    log_start = cramped_server.log_path.stat().st_size
    time.sleep(5)
    with cramped_server.log_path.open("rb") as log:
        log.seek(log_start)
        lines = log.read().decode().splitlines()
    refused = [line for line in lines if f"sandbox {sbx.id} could not hibernate" in line]
    assert 1 <= len(refused) <= 3 and not [line for line in lines if "reaper round failed" in line], lines
    assert sbx.get_info().state == "running"
