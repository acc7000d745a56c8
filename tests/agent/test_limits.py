"""The limits the agent enforces from inside: the OOM killer and RLIMIT_NPROC."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from corral.agent import limits
from corral.agent.limits import OOM_GROWTH, MemoryInUse, OomKiller
from tests.agent.conftest import USER_UID, Agent, UserWorld, start_agent, stop
from tests.agent.helpers import server_stream, sh, start_message


@pytest.fixture(scope="module")
def limited_agent(tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld) -> Iterator[Agent]:
    running = start_agent(
        tmp_path_factory.mktemp("limited-agent"),
        env={
            "CORRAL_AGENT_MEMORY_LIMIT_MB": "64",
            "CORRAL_AGENT_PIDS_LIMIT": "20",
            "CORRAL_AGENT_ETC": str(user_world.etc),
        },
    )
    try:
        yield running
    finally:
        stop(running.process)
        print(running.log())


def test_memory_hog_is_killed(limited_agent: Agent) -> None:
    hog = "import time\nx = bytearray(200 << 20)\ntime.sleep(20)\n"
    with httpx.Client(base_url=limited_agent.url, timeout=30) as c:
        start = start_message(sys.executable, "-c", hog)
        result = server_stream(c, "process.Process/Start", start, user="root")
        after = server_stream(c, "process.Process/Start", sh("echo still here"), user="root")
    assert result.exit["status"] == "signal: killed"
    assert after.output("stdout") == b"still here\n"
    assert "oom:" in limited_agent.log()


def test_pids_limit_refuses_forks_past_it(limited_agent: Agent) -> None:
    # As `user`, try to start 40 sleeps; the shell dies at the first fork refused.
    with httpx.Client(base_url=limited_agent.url, timeout=30) as c:
        bomb = server_stream(c, "process.Process/Start", sh("for i in $(seq 40); do sleep 5 & done; wait"))
        count = server_stream(c, "process.Process/Start", sh(f"ps -o pid= -u {USER_UID}"), user="root")
        server_stream(c, "process.Process/Start", sh(f"pkill -KILL -u {USER_UID}; true"), user="root")
    assert b"fork" in bomb.output("stderr").lower()
    assert 0 < len(count.output("stdout").split()) <= 20


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    yield running
    running.close()


def test_after_a_kill_the_oom_killer_waits_for_the_victims_memory_before_killing_again(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Two processes of the killer's own: the larger is the first victim. The memory
    # in use is scripted as gVisor reports it, where a dead process's memory comes
    # back tens of milliseconds after it is reaped.
    big = subprocess.Popen([sys.executable, "-c", BIG], start_new_session=True, stdout=subprocess.PIPE)
    small = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert big.stdout is not None and big.stdout.readline() == b"ready\n"
        readings = iter([300 << 20, 300 << 20, 290 << 20, 40 << 20, 300 << 20])
        killer = OomKiller(loop, 256 << 20, lambda: {big.pid, small.pid}, in_use=lambda: next(readings))
        assert killer.check() == big.pid
        assert big.wait(5) == -signal.SIGKILL
        assert killer.check() is None and killer.check() is None  # its memory is not back yet
        assert killer.check() is None  # back: under the limit
        assert killer.check() == small.pid  # over again, a new kill
        assert small.wait(5) == -signal.SIGKILL
    finally:
        for proc in (big, small):
            proc.kill()
            proc.wait()


def test_the_oom_killer_stops_waiting_when_memory_keeps_growing_or_the_wait_is_over(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "OOM_RELEASE_WAIT", 0.2)
    procs = [subprocess.Popen(["sleep", "30"], start_new_session=True) for _ in range(3)]
    try:
        readings = iter([300 << 20, (300 << 20) + OOM_GROWTH + (1 << 20), 300 << 20, 300 << 20])
        killer = OomKiller(loop, 256 << 20, lambda: {p.pid for p in procs}, in_use=lambda: next(readings))
        killed = [killer.check(), killer.check()]  # the second: memory grew past the kill's
        assert killed[0] is not None and killed[1] is not None and killed[0] != killed[1]
        assert killer.check() is None  # waiting for the second victim's memory
        time.sleep(0.3)
        third = killer.check()  # the wait is over
        assert third is not None and third not in killed
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_the_oom_killer_never_picks_a_victim_still_dying_nor_a_zombie(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGKILL takes effect asynchronously; signal 0 instead stands for a victim that
    # has not died yet when the next check comes, however long that takes.
    monkeypatch.setattr(limits, "signal", SimpleNamespace(SIGKILL=0))
    monkeypatch.setattr(limits, "OOM_RELEASE_WAIT", 0)  # each check may kill
    big = subprocess.Popen([sys.executable, "-c", BIG], start_new_session=True, stdout=subprocess.PIPE)
    procs = [subprocess.Popen(["sleep", "30"], start_new_session=True) for _ in range(2)]
    try:
        assert big.stdout is not None and big.stdout.readline() == b"ready\n"
        zombie = procs[1]
        os.kill(zombie.pid, signal.SIGKILL)  # not waited for: a zombie until the finally
        _wait_for_state(zombie.pid, "Z")
        killer = OomKiller(loop, 256 << 20, lambda: {p.pid for p in (big, *procs)}, in_use=lambda: 400 << 20)
        assert killer.check() == big.pid  # the largest
        assert killer.check() == procs[0].pid  # alive still, but a victim: the next largest
        assert killer.check() is None  # the rest are victims or a zombie
    finally:
        for proc in (big, *procs):
            proc.kill()
            proc.wait()


def _wait_for_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != state:
        assert time.monotonic() < deadline, f"{pid} never reached state {state}"
        time.sleep(0.01)


BIG = "x = bytearray(32 << 20)\nprint('ready', flush=True)\nimport time\ntime.sleep(30)\n"


def test_memory_in_use_reads_the_file_anew_each_time(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_bytes(b"MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\n")
    measure = MemoryInUse(str(meminfo))
    try:
        assert measure() == 600 << 10
        with meminfo.open("r+b") as f:  # in place: the open file sees it, as it sees /proc's
            f.write(b"MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     250 kB\n")
        assert measure() == 750 << 10
        meminfo.write_bytes(b"MemTotal:        1000 kB\n")
        assert measure() is None  # no MemAvailable: no measure
    finally:
        measure.close()
    assert MemoryInUse(str(tmp_path / "absent"))() is None
    host = MemoryInUse()
    try:
        in_use = host()
        assert in_use is not None and 0 < in_use < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    finally:
        host.close()
