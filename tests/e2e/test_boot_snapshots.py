"""Boot snapshots: creates restore a booted sandbox of their image and shape instead of booting one."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import CommandExitError, Sandbox
from tests.leftovers import cgroups_of, processes_naming
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.runsc]

RESTORED = "from its boot snapshot"


def boot_snapshots(url: str, *, made: int = 1, timeout: float = 120.0) -> list[dict[str, object]]:
    """The server's boot snapshots, once none is being made and at least ``made`` exist."""
    deadline = time.monotonic() + timeout
    while True:
        listed = httpx.get(f"{url}/v1/boot-snapshots", timeout=30).json()
        if not listed["making"] and len(listed["boot_snapshots"]) >= made:
            return list(listed["boot_snapshots"])
        assert time.monotonic() < deadline, f"boot snapshots not made within {timeout:g}s: {listed}"
        time.sleep(0.2)


def restored(proc: ServerProcess, sbx: Sandbox) -> bool:
    """Whether the server says it made ``sbx`` from a boot snapshot (else it booted)."""
    line = next(line for line in proc.log_path.read_text().splitlines() if f"sandbox {sbx.id} running" in line)
    return RESTORED in line


@pytest.fixture
def server_of(tmp_path: Path) -> Iterator[object]:
    """A server of the test's own, with settings, in an address range of its own."""

    def start(name: str = "data", **env: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / name, subnet_index=16 + worker_index(), env=env)
        return proc

    yield start


def test_creates_restore_the_default_images_boot_snapshot(own_server: ServerProcess) -> None:
    url = own_server.url
    [saved] = boot_snapshots(url)  # made when the server started
    assert saved["image"] == "corral/base" and (saved["vcpus"], saved["memory_mb"]) == (1, 512)
    assert own_server.data_dir.joinpath("boot-snapshots", str(saved["key"]), "memory").is_dir()

    one = Sandbox.create(url=url, envs={"GREETING": "hello"}, metadata={"n": "1"})
    two = Sandbox.create(url=url)
    try:
        assert restored(own_server, one) and restored(own_server, two)
        # Each is its own machine: the create's environment, its own address, its own files.
        assert one.commands.run("echo $GREETING; whoami; hostname").stdout == "hello\nuser\ncorral\n"
        assert two.commands.run("echo ${GREETING:-none}").stdout == "none\n"
        for sbx in (one, two):
            hosts = sbx.files.read("/etc/hosts")
            assert f"{sbx.get_info().address}\tcorral" in hosts, hosts
        one.files.write("/home/user/mine.txt", "one's")
        assert not two.files.exists("/home/user/mine.txt")
        # New processes draw their own random bytes, though both agents came from one saved memory.
        draw = "python3 -c 'import os; print(os.urandom(16).hex())'"
        assert one.commands.run(draw).stdout != two.commands.run(draw).stdout
        # A server in one is reached at its own address, from the host.
        one.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True, cwd="/home/user")
        deadline = time.monotonic() + 30
        while True:
            try:
                got = httpx.get(f"http://{one.get_info().address}:8000/mine.txt", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert got.text == "one's"
        # Limits hold as in a booted sandbox: a memory hog dies inside, the sandbox goes on.
        with pytest.raises(CommandExitError) as hog:
            one.commands.run("python3 -c 'x = []\nwhile True: x.append(bytearray(16 << 20))'", timeout=60)
        assert hog.value.exit_code in (137, -9)  # SIGKILL from the sandbox's OOM killer
        assert one.commands.run("echo still here").stdout == "still here\n"
    finally:
        one.kill()
        two.kill()


def test_a_new_shape_boots_once_then_restores(own_server: ServerProcess) -> None:
    url = own_server.url
    boot_snapshots(url)
    first = Sandbox.create(url=url, memory_mb=768, vcpus=2)
    try:
        assert not restored(own_server, first)  # none of this shape yet: it booted, and one is made behind it
        shapes = {(s["vcpus"], s["memory_mb"]) for s in boot_snapshots(url, made=2)}
        assert shapes == {(1, 512), (2, 768)}
        second = Sandbox.create(url=url, memory_mb=768, vcpus=2)
        assert restored(own_server, second)
        shown = second.commands.run("nproc; grep MemTotal /proc/meminfo").stdout.split()
        assert shown[:3] == ["2", "MemTotal:", "786432"], shown
        second.kill()
    finally:
        first.kill()


def test_a_damaged_boot_snapshot_is_dropped_and_the_create_boots(own_server: ServerProcess) -> None:
    url = own_server.url
    [saved] = boot_snapshots(url)
    memory = own_server.data_dir / "boot-snapshots" / str(saved["key"]) / "memory"
    for image in memory.iterdir():
        if image.is_file():
            image.write_bytes(b"not a checkpoint")
    sbx = Sandbox.create(url=url)
    try:
        assert not restored(own_server, sbx)
        assert sbx.commands.run("echo booted").stdout == "booted\n"
        assert "failed to restore" in own_server.log_path.read_text()
        # ... and a good one is made again for the next create.
        [again] = boot_snapshots(url)
        assert again["key"] == saved["key"]
        other = Sandbox.create(url=url)
        assert restored(own_server, other)
        other.kill()
    finally:
        sbx.kill()


def test_boot_snapshots_of_another_runtime_are_removed_at_start(own_server: ServerProcess) -> None:
    [saved] = boot_snapshots(own_server.url)
    own_server.stop()
    saved_dir = own_server.data_dir / "boot-snapshots"
    made = saved_dir / str(saved["key"])
    # One made by another runsc or agent: its key.json says so, and its key (the dir's name) is not today's.
    older = saved_dir / ("f" * 24)
    subprocess.run(["cp", "-a", str(made), str(older)], check=True)
    data = json.loads((older / "key.json").read_text())
    data["runtime"] = "an older runsc"
    (older / "key.json").write_text(json.dumps(data))
    partial = saved_dir / (str(saved["key"]) + ".partial")  # one a crash cut short
    subprocess.run(["cp", "-a", str(made), str(partial)], check=True)
    own_server.start()
    assert not older.exists() and not partial.exists()
    assert [s["key"] for s in boot_snapshots(own_server.url)] == [saved["key"]]
    sbx = Sandbox.create(url=own_server.url)
    assert restored(own_server, sbx)
    sbx.kill()


def test_killed_while_making_one_leaves_nothing(own_server: ServerProcess) -> None:
    """A server killed while it boots the hidden sandbox: the next start removes it, then makes the snapshot."""
    url = own_server.url
    boot_snapshots(url)
    own_server.stop()
    for entry in (own_server.data_dir / "boot-snapshots").iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    own_server.start()
    sandboxes = own_server.data_dir / "sandboxes"
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("bt") for p in sandboxes.glob("*")):
        assert time.monotonic() < deadline, "no hidden sandbox was booted for the boot snapshot"
        time.sleep(0.01)
    [hidden] = [p.name for p in sandboxes.glob("bt*")]
    own_server.kill9()
    own_server.start()
    deadline = time.monotonic() + 30
    while (sandboxes / hidden).exists() or Path(f"/var/run/netns/corral-{hidden}").exists():
        assert time.monotonic() < deadline, f"the hidden sandbox {hidden} was not removed"
        time.sleep(0.1)
    assert processes_naming(hidden) == []
    assert cgroups_of({hidden}) == []  # runsc knew nothing of it: its cgroups are corral's to remove
    assert not list((own_server.data_dir / "boot-snapshots").glob("*.partial"))
    boot_snapshots(url)
    sbx = Sandbox.create(url=url)
    assert restored(own_server, sbx)
    sbx.kill()


def test_least_recently_used_go_first_and_deleting_one(server_of: object) -> None:
    with server_of(CORRAL_BOOT_SNAPSHOTS="1").running() as proc:  # type: ignore[operator]
        boot_snapshots(proc.url)
        Sandbox.create(url=proc.url, memory_mb=640).kill()
        [kept] = boot_snapshots(proc.url)
        assert kept["memory_mb"] == 640  # the default shape's went when this one came
        missing = httpx.delete(f"{proc.url}/v1/boot-snapshots/{'0' * 24}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert httpx.delete(f"{proc.url}/v1/boot-snapshots/{kept['key']}").status_code == 204
        assert httpx.get(f"{proc.url}/v1/boot-snapshots").json()["boot_snapshots"] == []


def test_none_are_kept_when_turned_off(server_of: object) -> None:
    with server_of(CORRAL_BOOT_SNAPSHOTS="0").running() as proc:  # type: ignore[operator]
        sbx = Sandbox.create(url=proc.url)
        assert not restored(proc, sbx)
        sbx.kill()
        assert httpx.get(f"{proc.url}/v1/boot-snapshots").json() == {"boot_snapshots": [], "making": 0}
        assert not (proc.data_dir / "boot-snapshots").exists()


@pytest.mark.parametrize("moment", ["booting", "saving", "removing"])
def test_stopped_while_making_one_leaves_nothing(own_server: ServerProcess, moment: str) -> None:
    """A server stopped (SIGTERM) while it makes a boot snapshot removes the hidden sandbox before it exits.

    ``booting``: its runsc run; ``saving``: its checkpoint; ``removing``: its teardown, once it is saved.
    """
    boot_snapshots(own_server.url)
    own_server.stop()
    saved = own_server.data_dir / "boot-snapshots"
    for entry in saved.iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    own_server.start()
    sandboxes = own_server.data_dir / "sandboxes"
    reached = {
        "booting": lambda: list(sandboxes.glob("bt*/bundle")),
        "saving": lambda: list(saved.glob("*.partial")),
        "removing": lambda: list(saved.glob("*/key.json")) and list(sandboxes.glob("bt*")),
    }[moment]
    deadline = time.monotonic() + 60
    while not reached():
        assert time.monotonic() < deadline, f"the making of the boot snapshot never reached {moment}"
        time.sleep(0.002)
    hidden = {p.name for p in sandboxes.glob("bt*")}
    own_server.stop()
    assert "Application shutdown complete" in own_server.log()  # it shut down, not killed
    for sid in hidden:
        assert not (sandboxes / sid).exists()
        assert not Path(f"/var/run/netns/corral-{sid}").exists()
        assert processes_naming(sid) == []
        runsc = ["/usr/local/lib/corral/bin/runsc", "--root", "/run/corral/runsc", "state", sid]
        assert subprocess.run(runsc, capture_output=True, check=False).returncode != 0  # runsc knows it no more
    assert not list(saved.glob("*.partial"))
    own_server.start()
