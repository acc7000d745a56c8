"""Snapshots, restore, fork and hibernation of real gVisor sandboxes (runsc checkpoint/restore)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import Interrupted, Sandbox, SnapshotNotFound
from corral.errors import InvalidRequest
from corral.runtimes.oci import OWN_RUNSC
from tests.serverproc import ServerProcess

pytestmark = [pytest.mark.runsc, pytest.mark.checkpoint]

REPL = """
import sys, time
state = {"count": 0}
while True:
    line = sys.stdin.readline()
    if not line:
        time.sleep(0.05); continue
    state["count"] += int(line)
    print(state["count"], flush=True)
"""


def test_snapshot_restore_keeps_a_repl_and_its_variables(sandbox_factory: Callable[..., Any], corral_url: str) -> None:
    sbx: Sandbox = sandbox_factory()
    sbx.files.write("/home/user/repl.py", REPL)
    handle = sbx.commands.run("python3 -u /home/user/repl.py", background=True)
    handle.send_stdin("5\n")
    sbx.files.write("/home/user/kept.txt", "before the snapshot\n")
    deadline = time.monotonic() + 10
    while "5" not in handle.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = sbx.snapshot(metadata={"step": "one"})
    assert snap.state == "ready" and snap.size > 0 and snap.metadata == {"step": "one"}
    sbx.files.write("/home/user/kept.txt", "after the snapshot\n")  # the copy must not see this

    restored: Sandbox = sandbox_factory(snapshot=snap.id)
    assert restored.id != sbx.id and restored.info().address != sbx.info().address
    assert restored.files.read("/home/user/kept.txt") == "before the snapshot\n"
    pid = handle.pid
    out = restored.commands.connect(pid)
    restored.commands.send_stdin(pid, "10\n")
    deadline = time.monotonic() + 10
    while "15" not in out.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "15" in out.stdout  # the REPL's variable survived: 5 + 10
    assert [s.id for s in Sandbox.list_snapshots(sbx.id, url=corral_url)] == [snap.id]
    Sandbox.delete_snapshot(snap.id, url=corral_url)
    with pytest.raises(SnapshotNotFound):
        sandbox_factory(snapshot=snap.id)


def test_ten_snapshot_restore_cycles_lose_nothing(sandbox_factory: Callable[..., Any], corral_url: str) -> None:
    sbx: Sandbox = sandbox_factory()
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(8192))  # 256 KiB
    sbx.files.write("/home/user/data.bin", data)
    sbx.commands.run("sleep 1000 & echo $! > /tmp/sleeper", background=True)
    current = sbx
    for i in range(10):
        snap = current.snapshot()
        nxt: Sandbox = sandbox_factory(snapshot=snap.id)
        assert nxt.files.read("/home/user/data.bin", format="bytes") == data
        assert nxt.commands.run("kill -0 $(cat /tmp/sleeper) && echo alive").stdout == "alive\n"
        nxt.files.write(f"/home/user/gen{i}", str(i))
        Sandbox.delete_snapshot(snap.id, url=corral_url)
        if current is not sbx:
            current.kill()
        current = nxt
    assert sorted(e.name for e in current.files.list("/home/user") if e.name.startswith("gen")) == [
        f"gen{i}" for i in range(10)
    ]


def test_fork_into_five_with_divergent_writes(sandbox_factory: Callable[..., Any]) -> None:
    parent: Sandbox = sandbox_factory()
    parent.files.write("/home/user/shared.txt", "from the parent\n")
    parent.commands.run("sleep 1000", background=True)
    children = parent.fork(5, metadata={"role": "child"})
    try:
        assert len({c.id for c in children}) == 5 and parent.id not in {c.id for c in children}
        assert len({c.info().address for c in children} | {parent.info().address}) == 6
        for i, child in enumerate(children):
            assert child.files.read("/home/user/shared.txt") == "from the parent\n"
            child.files.write("/home/user/mine.txt", f"child {i}\n")
            assert "sleep 1000" in child.commands.run("ps ax").stdout
            assert child.info().metadata["corral.forked_from"] == parent.id
        for i, child in enumerate(children):
            assert child.files.read("/home/user/mine.txt") == f"child {i}\n"
        assert not parent.files.exists("/home/user/mine.txt")
        assert parent.commands.run("echo parent goes on").stdout == "parent goes on\n"
    finally:
        for child in children:
            child.kill()
            child.close()


def test_a_snapshot_or_fork_leaves_a_paused_or_hibernated_sandbox_as_it_was(
    sandbox_factory: Callable[..., Any], corral_url: str
) -> None:
    sbx: Sandbox = sandbox_factory(timeout=600)
    sbx.commands.run("sleep 1000 & echo kept > /tmp/kept", background=True)
    sbx.pause()
    paused_snap = sbx.snapshot()
    assert sbx.info().state == "paused"  # a snapshot used to thaw it
    sbx.hibernate()
    hibernated_snap = sbx.snapshot()
    (child,) = sbx.fork(1)
    try:
        assert sbx.info().state == "hibernated"  # neither woke it
        for snap in (paused_snap, hibernated_snap):
            restored: Sandbox = sandbox_factory(snapshot=snap.id)
            r = restored.commands.run("cat /tmp/kept; pgrep -x sleep >/dev/null && echo sleeping")
            assert r.stdout == "kept\nsleeping\n"
            restored.kill()
        assert child.info().state == "running"
        assert child.commands.run("pgrep -x sleep >/dev/null && echo sleeping").stdout == "sleeping\n"
    finally:
        child.kill()
        child.close()
    Sandbox.delete_snapshot(hibernated_snap.id, url=corral_url)  # the sandbox's own saved state is its own
    assert sbx.commands.run("cat /tmp/kept").stdout == "kept\n" and sbx.info().state == "running"


def test_hibernate_by_idle_time_then_wake_by_an_exec(sandbox_factory: Callable[..., Any], corral_url: str) -> None:
    sbx: Sandbox = sandbox_factory(auto_pause=2, timeout=600)
    sbx.commands.run("sleep 1000 & echo kept > /tmp/kept", background=True)
    deadline = time.monotonic() + 20
    while sbx.info().state != "hibernated" and time.monotonic() < deadline:
        time.sleep(0.25)
    info = sbx.info()
    assert info.state == "hibernated" and info.ends_at is None and 500 < (info.remaining or 0) <= 600
    with pytest.raises(httpx.TransportError):  # nothing runs: no agent answers at its address
        httpx.get(f"http://{info.address}:49983/health", timeout=1.0)
    r = sbx.commands.run("cat /tmp/kept; pgrep -x sleep >/dev/null && echo sleeping")
    assert r.stdout == "kept\nsleeping\n"
    assert sbx.info().state == "running"


def test_a_command_running_longer_than_auto_pause_is_use_not_idleness(sandbox_factory: Callable[..., Any]) -> None:
    sbx: Sandbox = sandbox_factory(auto_pause=1, timeout=600)
    r = sbx.commands.run("sleep 3.5; echo finished", timeout=30)  # its output is read all along
    assert r.stdout == "finished\n" and sbx.info().state == "running"
    deadline = time.monotonic() + 20
    while sbx.info().state != "hibernated" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert sbx.info().state == "hibernated"  # idle once it ended


REFUSING_RUNSC = """#!/bin/sh
# corral's runsc, except that a `delete` of a sandbox with a file named for it in {marks} fails once.
for arg; do last=$arg; done
case " $* " in *" delete "*)
    if rm "{marks}/$last" 2>/dev/null; then echo "delete refused by the test" >&2; exit 1; fi
esac
exec {runsc} "$@"
"""


def test_a_wake_deletes_the_record_a_failed_delete_after_the_hibernate_left(
    own_server: ServerProcess, tmp_path: Path
) -> None:
    """A hibernate deletes runsc's record of the saved sandbox in the background; if that fails, the wake does."""
    marks = tmp_path / "refuse-delete"
    marks.mkdir()
    wrapper = tmp_path / "runsc"
    wrapper.write_text(REFUSING_RUNSC.format(marks=marks, runsc=OWN_RUNSC))
    wrapper.chmod(0o755)
    own_server.stop()
    own_server.env["CORRAL_RUNSC_PATH"] = str(wrapper)
    own_server.start()

    sbx = Sandbox.create(url=own_server.url, timeout=600)
    sbx.commands.run("sleep 1000 & echo kept > /tmp/kept", background=True)
    (marks / sbx.id).touch()
    sbx.hibernate()
    deadline = time.monotonic() + 15
    while (marks / sbx.id).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (marks / sbx.id).exists()  # the delete was tried, and refused
    time.sleep(0.5)  # its failure seen
    r = sbx.commands.run("cat /tmp/kept; pgrep -x sleep >/dev/null && echo sleeping")
    assert r.stdout == "kept\nsleeping\n"
    assert "runsc delete of its stopped record failed: delete refused by the test" in own_server.log_path.read_text()
    sbx.kill()


def checkpoint_compression(data_dir: Path, snapshot_id: str) -> str:
    """How gVisor wrote a snapshot's memory: its image file opens with a JSON header that says."""
    head = (data_dir / "snapshots" / snapshot_id / "memory" / "checkpoint.img").read_bytes()[:4096]
    header = json.JSONDecoder().raw_decode(head[head.index(b"{") :].decode(errors="replace"))[0]
    return str(header["compression"])


def test_snapshots_are_saved_uncompressed_and_compressed_ones_still_restore(own_server: ServerProcess) -> None:
    url = own_server.url
    sbx = Sandbox.create(url=url)
    sbx.files.write("/home/user/kept.txt", "kept\n")
    plain = sbx.snapshot()
    assert checkpoint_compression(own_server.data_dir, plain.id) == "none"

    own_server.stop()
    own_server.env["CORRAL_SNAPSHOT_COMPRESSION"] = "flate-best-speed"
    own_server.start()
    packed = sbx.snapshot()
    assert checkpoint_compression(own_server.data_dir, packed.id) == "flate-best-speed"
    assert packed.size < plain.size

    own_server.stop()
    del own_server.env["CORRAL_SNAPSHOT_COMPRESSION"]
    own_server.start()
    for snap in (plain, packed):  # a server restores either, however it saves its own
        restored = Sandbox.create(url=url, snapshot=snap.id)
        assert restored.files.read("/home/user/kept.txt") == "kept\n"
        assert restored.commands.run("echo $((6*7))").stdout == "42\n"


def test_a_restore_keeps_its_snapshots_shape_and_says_so_when_asked_another(
    sandbox_factory: Callable[..., Any], corral_url: str
) -> None:
    sbx: Sandbox = sandbox_factory()
    snap = sbx.snapshot()
    try:
        with pytest.raises(InvalidRequest, match=r"1 vCPU and 512 MiB.*leave out memory_mb and vcpus"):
            sandbox_factory(snapshot=snap.id, vcpus=2, memory_mb=1024)
        same: Sandbox = sandbox_factory(snapshot=snap.id, vcpus=1, memory_mb=512)  # its own shape: fine
        info = same.get_info()
        assert (info.vcpus, info.memory_mb) == (1, 512)
    finally:
        Sandbox.delete_snapshot(snap.id, url=corral_url)


def test_a_command_cut_by_a_snapshot_is_interrupted_and_goes_on(
    sandbox_factory: Callable[..., Any], corral_url: str
) -> None:
    sbx: Sandbox = sandbox_factory(timeout=600)
    with ThreadPoolExecutor(1) as pool:
        line = "until [ -e /tmp/go ]; do sleep 0.1; done; echo finished > /tmp/done"
        running = pool.submit(sbx.commands.run, line, timeout=60)
        deadline = time.monotonic() + 30
        while not sbx.commands.list():  # it runs
            assert time.monotonic() < deadline
            time.sleep(0.1)
        snap = sbx.snapshot()
        with pytest.raises(Interrupted) as cut:  # it was a 500, and the process was to be killed
            running.result(timeout=60)
    pid = cut.value.details["pid"]
    assert f"commands.connect({pid})" in cut.value.message
    followed = sbx.commands.connect(pid)  # it goes on, and is followed again
    sbx.files.write("/tmp/go", "")
    assert followed.wait().exit_code == 0
    assert sbx.files.read("/tmp/done") == "finished\n" and sbx.info().state == "running"
    Sandbox.delete_snapshot(snap.id, url=corral_url)


def test_forks_taken_while_files_upload_all_answer(sandbox_factory: Callable[..., Any]) -> None:
    """gVisor could save the agent's epoll set half-changed: a copy then spun on a closed socket, deaf."""
    sbx: Sandbox = sandbox_factory(timeout=600)
    uploading = True
    cut = 0

    def upload(n: int) -> int:
        done = 0
        while uploading:
            try:
                sbx.files.write(f"/tmp/upload-{n}", b"x" * 50_000)
                done += 1
            except Interrupted:
                nonlocal cut
                cut += 1
        return done

    with ThreadPoolExecutor(6) as pool:
        uploads = [pool.submit(upload, n) for n in range(6)]
        try:
            for _ in range(10):
                time.sleep(0.2)
                (child,) = sbx.fork(1)  # the copy's agent must answer for the fork to succeed at all
                try:
                    assert child.commands.run("echo copy", timeout=30).stdout == "copy\n"
                finally:
                    child.kill()
        finally:
            uploading = False
        assert all(u.result(timeout=60) > 0 for u in uploads), cut
    assert sbx.commands.run("echo parent", timeout=30).stdout == "parent\n"


@pytest.mark.parametrize("saving", ["hibernate", "fork"])
def test_a_paused_sandbox_with_calls_waiting_on_it_is_saved_whole(
    saving: str, sandbox_factory: Callable[..., Any]
) -> None:
    """A paused agent cannot close the connections a checkpoint must not keep: it is thawed for that."""
    sbx: Sandbox = sandbox_factory(timeout=600)
    sbx.commands.run("true")
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(sbx.commands.run, "sleep 30", timeout=60) for _ in range(2)]
        deadline = time.monotonic() + 30
        while len(sbx.commands.list()) < 2:  # both run
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sbx.pause()  # their streams wait on the frozen agent
        saved = sbx.hibernate() if saving == "hibernate" else sbx.fork(1)
        for call in waiting:
            with pytest.raises(Interrupted):
                call.result(timeout=60)
    if saving == "fork":
        (child,) = saved
        try:
            assert child.commands.run("echo child", timeout=30).stdout == "child\n"
        finally:
            child.kill()
        assert sbx.info().state == "paused"
    assert sbx.commands.run("echo awake", timeout=30).stdout == "awake\n"
