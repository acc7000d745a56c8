"""The server is only a controller: kill -9 it, start it again, lose nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.runtimes.cgroups import remove as remove_cgroups
from corral.runtimes.cgroups import sandbox_cgroup
from tests.leftovers import cgroups_of, processes_naming
from tests.serverproc import ServerProcess


def test_kill9_and_restart_loses_nothing(own_server: ServerProcess) -> None:
    url = own_server.url
    keep = Sandbox.create(url=url)
    doomed = Sandbox.create(url=url)
    keep.files.write("/home/user/state.txt", "before the crash")
    keep.commands.run("echo 41 > /tmp/counter")
    server_in_sandbox = keep.commands.run(
        "python3 -c 'import time\nwhile True: time.sleep(1)'", background=True, tag="sleeper"
    )

    own_server.kill9()
    # While the server is down, one sandbox's runtime dies from outside.
    runsc = "/usr/local/lib/corral/bin/runsc"
    subprocess.run([runsc, "--root", "/run/corral/runsc", "kill", doomed.id, "KILL"], check=False)
    subprocess.run([runsc, "--root", "/run/corral/runsc", "delete", "--force", doomed.id], check=False)
    own_server.start()

    listed = {s.id: s for s in Sandbox.list(url=url)}
    assert listed[keep.id].state == "running"
    assert listed[doomed.id].state == "dead"
    assert listed[doomed.id].error

    again = Sandbox.connect(keep.id, url=url)
    assert again.files.read("/home/user/state.txt") == "before the crash"
    assert again.commands.run("cat /tmp/counter").stdout == "41\n"
    assert server_in_sandbox.pid in [p.pid for p in again.commands.list()]
    assert again.commands.run("echo alive").stdout == "alive\n"

    # a dead sandbox answers with a clear error and can still be killed
    r = httpx.post(f"{url}/v1/sandboxes/{doomed.id}/exec", json={"cmd": "true"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "sandbox_not_running"
    Sandbox.connect(doomed.id, url=url).kill()
    assert doomed.id not in {s.id for s in Sandbox.list(url=url)}
    # its namespace and disk are removed in the background, promptly
    leftovers = [Path(f"/var/run/netns/corral-{doomed.id}"), own_server.data_dir / "sandboxes" / doomed.id]
    deadline = time.monotonic() + 15
    while any(p.exists() for p in leftovers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(p.exists() for p in leftovers)


RUNSC = ["/usr/local/lib/corral/bin/runsc", "--root", "/run/corral/runsc", "--network=sandbox", "--overlay2=none"]


def sandbox_with_a_sleeper(url: str, state: str) -> Sandbox:
    """A sandbox holding ``state`` in /home/user/state.txt and a background ``sleep`` tagged ``sleeper``."""
    sbx = Sandbox.create(url=url, timeout=600)
    sbx.files.write("/home/user/state.txt", state)
    sbx.commands.run("sleep 1000", background=True, tag="sleeper")
    return sbx


@pytest.mark.checkpoint
def test_a_sandbox_saved_by_a_hibernate_whose_runsc_record_remains_is_hibernated(own_server: ServerProcess) -> None:
    """A hibernate deletes runsc's record of the saved sandbox in the background: a crash can come first."""
    url = own_server.url
    sbx = sandbox_with_a_sleeper(url, "saved")

    own_server.kill9()
    # What a hibernate had done when the server died: the checkpoint, not yet the delete
    # (and not yet the store's new state either: the runtime is taken at its word).
    saved = own_server.data_dir / "sandboxes" / sbx.id / "hibernated"
    saved.mkdir()
    subprocess.run([*RUNSC, "checkpoint", "--image-path", str(saved / "memory"), sbx.id], check=True)
    # runsc keeps its record until deleted, and says "running" until the host's init reaps the
    # stopped sandbox's process (on the development host, 1-1.7 s), "stopped" after.
    state = subprocess.run([*RUNSC, "state", sbx.id], capture_output=True, text=True, check=True)
    assert json.loads(state.stdout)["status"] in ("running", "stopped")
    own_server.start()

    (listed,) = [s for s in Sandbox.list(url=url) if s.id == sbx.id]
    assert listed.state == "hibernated", listed.error
    again = Sandbox.connect(sbx.id, url=url)  # woken: a restore under the same id, so the record went
    assert again.files.read("/home/user/state.txt") == "saved"
    assert "sleeper" in [p.tag for p in again.commands.list()]
    assert again.info().state == "running"
    again.kill()


def test_a_sandbox_runsc_forgot_leaves_no_cgroups_or_files_once_killed(own_server: ServerProcess) -> None:
    """As after a crash between runsc making a sandbox's cgroups and saving its state: corral removes them."""
    url = own_server.url
    sbx = Sandbox.create(url=url)
    own_server.kill9()
    subprocess.run([*RUNSC, "kill", "--all", sbx.id, "KILL"], check=True)
    for state in Path("/run/corral/runsc").glob(f"{sbx.id}_sandbox:{sbx.id}.state"):
        state.unlink()  # runsc knows it no more; the sandbox's (now empty) cgroups are still there
    assert cgroups_of({sbx.id})
    own_server.start()

    (listed,) = [s for s in Sandbox.list(url=url) if s.id == sbx.id]
    assert listed.state == "dead"
    Sandbox.connect(sbx.id, url=url).kill()

    def litter() -> list[Path]:  # its lock file and socket, removed by the teardown after its cgroups
        return list(Path("/run/corral/runsc").glob(f"*{sbx.id}*"))

    deadline = time.monotonic() + 15
    while (cgroups_of({sbx.id}) or litter()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cgroups_of({sbx.id}) == []
    assert litter() == []


@pytest.mark.checkpoint
def test_a_hibernated_sandbox_wakes_after_the_host_restarted(own_server: ServerProcess) -> None:
    """A reboot takes every mount, loop device, namespace and runsc file with it; the disk and checkpoint stay."""
    url = own_server.url
    sbx = sandbox_with_a_sleeper(url, "kept over a reboot")
    sbx.hibernate()
    own_server.kill9()

    # A reboot ends every process. The saved sandbox's file server would end once `runsc delete`
    # kills it, but that delete runs in the background and the server may have been killed before
    # it began (the next server does it then); its mount namespace holds the disk until it exits.
    deadline = time.monotonic() + 60
    while survivors := processes_naming(sbx.id):
        assert time.monotonic() < deadline, survivors
        for line in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        time.sleep(0.2)
    sdir = own_server.data_dir / "sandboxes" / sbx.id
    for mount_point in (sdir / "rootfs", sdir / "disk"):
        done = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if done.returncode:
            holders = subprocess.run(["fuser", "-vm", str(mount_point)], capture_output=True, text=True)
            raise AssertionError(f"{done.stderr}{holders.stdout}{holders.stderr}")
    loops = subprocess.run(["losetup", "-j", str(sdir / "disk.img")], capture_output=True, text=True, check=True)
    for line in loops.stdout.splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)  # autoclear may have taken it
    subprocess.run(["ip", "netns", "delete", f"corral-{sbx.id}"], check=True)
    for litter in Path("/run/corral/runsc").glob(f"*{sbx.id}*"):
        litter.unlink()
    remove_cgroups(sandbox_cgroup(sbx.id))
    own_server.start()

    (listed,) = [s for s in Sandbox.list(url=url) if s.id == sbx.id]
    assert listed.state == "hibernated", listed.error
    asleep = Sandbox.connect(sbx.id, url=url, resume=False)
    snap = asleep.snapshot()  # from what it saved, as it sleeps
    assert asleep.info().state == "hibernated"
    again = Sandbox.connect(sbx.id, url=url)  # woken: its disk and rootfs mounted again first
    assert again.files.read("/home/user/state.txt") == "kept over a reboot"
    assert "sleeper" in [p.tag for p in again.commands.list()]
    assert again.commands.run("echo reachable").stdout == "reachable\n"
    again.kill()
    with Sandbox.create(url=url, snapshot=snap.id) as copy:
        assert copy.files.read("/home/user/state.txt") == "kept over a reboot"
    Sandbox.delete_snapshot(snap.id, url=url)
