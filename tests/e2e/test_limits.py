"""Resource limits hold inside a real gVisor sandbox, and the rest stays unaffected."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from corral import CommandExitError


def test_memory_hog_is_killed_inside_its_sandbox(sandbox_factory) -> None:
    hog = sandbox_factory(memory_mb=256)
    bystander = sandbox_factory()
    with pytest.raises(CommandExitError) as info:
        hog.commands.run("python3 -c 'x = []\nwhile True: x.append(bytearray(16 << 20))'", timeout=60)
    assert info.value.exit_code in (137, -9)  # SIGKILL from the sandbox's OOM killer
    # the sandbox itself survives, and so does its neighbour
    assert hog.commands.run("echo survived").stdout == "survived\n"
    assert bystander.commands.run("echo fine").stdout == "fine\n"
    assert "oom" in hog.logs().lower()


def test_memory_limit_is_what_the_sandbox_sees(sandbox_factory) -> None:
    sbx = sandbox_factory(memory_mb=300)
    total_kb = int(sbx.commands.run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
    assert 290 * 1024 <= total_kb <= 310 * 1024


def test_fork_bomb_stays_contained(sandbox_factory) -> None:
    bomb = sandbox_factory()
    bystander = sandbox_factory()
    # every process forks two more, forever; the pids limit stops it, then we end it
    bomb.commands.run("b() { b & b & wait; }; b", background=True)
    time.sleep(5)
    started = time.monotonic()
    assert bystander.commands.run("echo unaffected").stdout == "unaffected\n"
    assert time.monotonic() - started < 5  # the neighbour answers at once, bomb or not
    # The bombed sandbox is slow (its one vCPU is full of shells) but alive: end the bomb. One
    # kill -9 -1 can miss shells forked while it runs, so the (builtin, fork-free) kill is
    # repeated until it finds no process left to kill.
    with contextlib.suppress(CommandExitError):
        bomb.commands.run("while kill -9 -1 2>/dev/null; do :; done", timeout=180)
    assert bomb.commands.run("echo survived", user="root", timeout=60).stdout == "survived\n"
    assert bomb.get_info().state == "running"
    assert bystander.commands.run("echo fine").stdout == "fine\n"


FORK_UNTIL_REFUSED = """
import os
pids = []
try:
    while len(pids) < 3000:
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "120"])
        pids.append(pid)
except OSError as exc:
    print(len(pids), exc.errno)
for pid in pids:
    os.kill(pid, 9)
"""


def test_pids_limit_refuses_forks_past_it(sandbox) -> None:
    sandbox.files.write("/tmp/forks.py", FORK_UNTIL_REFUSED)
    count, errno = sandbox.commands.run("python3 /tmp/forks.py", timeout=170).stdout.split()
    assert errno == "11"  # EAGAIN: fork refused
    assert 400 < int(count) <= 512  # the limit for a 512 MiB sandbox is 512 processes
    assert sandbox.commands.run("echo fine").stdout == "fine\n"


def test_vcpus_are_a_cpu_quota(sandbox_factory) -> None:
    sbx = sandbox_factory(vcpus=1)
    quota = Path(f"/sys/fs/cgroup/cpu/corral/{sbx.id}/cpu.cfs_quota_us")
    if not quota.exists():  # cgroup v2
        quota = Path(f"/sys/fs/cgroup/corral/{sbx.id}/cpu.max")
    assert quota.read_text().split()[0] == "100000"
    # gVisor shows at least two CPUs, whatever the quota
    assert int(sbx.commands.run("nproc").stdout) >= 1


def test_an_upload_that_fills_the_disk_midway_is_disk_full_and_leaves_nothing(sandbox_factory) -> None:
    """The agent refuses it with most of it still coming: it reads the rest, so the answer arrives."""
    from corral import DiskFull

    small = sandbox_factory(disk_mb=64)
    with pytest.raises(DiskFull) as full:  # it was a 502: the agent closed on the unread rest
        small.files.write("/home/user/big", b"z" * (100 << 20))
    assert "/home/user/big" in full.value.message
    assert small.commands.run("ls -A /home/user").stdout.split() == [".bash_logout", ".bashrc", ".profile"]
    small.files.write("/home/user/after", "still writable")
    assert small.files.read("/home/user/after") == "still writable"


def test_a_full_disk_stops_its_sandbox_only(sandbox_factory, server) -> None:
    from corral import DiskFull

    small = sandbox_factory(disk_mb=64)
    bystander = sandbox_factory()
    assert small.info().disk_mb == 64
    assert bystander.info().disk_mb == 10_240  # the server's default
    df = small.commands.run("df -k / | tail -1").stdout.split()
    assert 50_000 <= int(df[1]) <= 66_000, df  # the sandbox sees a disk of its size
    with pytest.raises(CommandExitError) as info:
        small.commands.run("dd if=/dev/zero of=/home/user/fill bs=1M count=200", timeout=120)
    assert "No space left" in info.value.stderr
    with pytest.raises(DiskFull) as full:
        small.files.write("/home/user/more", b"x" * (8 << 20))
    assert full.value.code == "disk_full"
    assert bystander.commands.run("dd if=/dev/zero of=/tmp/f bs=1M count=100 && echo ok").stdout.endswith("ok\n")
    # On the host, the disk holds what was written, not more.
    image = server.data_dir / "sandboxes" / small.id / "disk.img"
    assert image.stat().st_blocks * 512 <= 70 << 20
    # Deleting gives the space back, inside and on the host.
    small.commands.run("rm /home/user/fill")
    small.files.write("/home/user/after", b"y" * (16 << 20))
    assert small.files.read("/home/user/after", format="bytes") == b"y" * (16 << 20)
    assert small.commands.run("echo alive").stdout == "alive\n"
