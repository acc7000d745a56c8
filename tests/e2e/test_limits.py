"""Resource limits hold inside a real gVisor sandbox, and the rest stays unaffected."""

from __future__ import annotations

import time

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
    bomb.commands.run("pkill -9 -u user || true", user="root", timeout=60)
    assert bomb.commands.run("echo survived", user="root").stdout == "survived\n"
    assert bystander.commands.run("echo fine").stdout == "fine\n"


def test_pids_limit_refuses_forks_past_it(sandbox) -> None:
    out = sandbox.commands.run(
        "for i in $(seq 1 2000); do sleep 60 & done 2>/dev/null; jobs -p | wc -l; kill $(jobs -p) 2>/dev/null; true",
        timeout=120,
    ).stdout
    assert int(out.split()[0]) < 1024


def test_vcpus(sandbox_factory) -> None:
    sbx = sandbox_factory(vcpus=1)
    assert sbx.commands.run("nproc").stdout.strip() == "1"
