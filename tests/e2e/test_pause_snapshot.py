"""Pause and resume of real gVisor sandboxes, and pausing at the timeout."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from corral import ExecTimeout, Sandbox, SandboxPaused

pytestmark = pytest.mark.runsc


def test_pause_and_resume_ten_times_keep_processes_and_bytes(sandbox_factory: Callable[..., Any]) -> None:
    sbx: Sandbox = sandbox_factory()
    sbx.files.write(
        "/home/user/counter.py",
        "import os, time\nn=0\nwhile True:\n    n+=1\n    open('/tmp/n.new','w').write(str(n))\n"
        "    os.replace('/tmp/n.new', '/tmp/n')\n    time.sleep(0.02)\n",
    )
    sbx.commands.run("python3 /home/user/counter.py", background=True)
    blob = bytes(range(256)) * 4096
    sbx.files.write("/home/user/blob.bin", blob)
    for _ in range(10):
        paused = sbx.pause()
        assert paused.state == "paused" and paused.ends_at is None and paused.remaining is not None
        with pytest.raises(SandboxPaused):
            sbx.pause()
        assert sbx.resume().state == "running"
    # the counter kept running across every pause, and nothing was lost
    first = int(sbx.files.read("/tmp/n"))
    time.sleep(0.3)
    assert int(sbx.files.read("/tmp/n")) > first
    assert (
        hashlib.sha256(sbx.files.read("/home/user/blob.bin", format="bytes")).digest() == hashlib.sha256(blob).digest()
    )


def test_any_call_resumes_a_paused_sandbox(sandbox_factory: Callable[..., Any], corral_url: str) -> None:
    sbx: Sandbox = sandbox_factory(timeout=120)
    sbx.pause()
    assert sbx.commands.run("echo awake").stdout == "awake\n"
    info = sbx.info()
    assert info.state == "running" and info.ends_at is not None
    sbx.pause()
    again = Sandbox.connect(sbx.id, url=corral_url)  # connect resumes, as E2B's does
    assert again.info().state == "running"
    again.close()


def test_on_timeout_pause_pauses_instead_of_killing(sandbox_factory: Callable[..., Any]) -> None:
    sbx: Sandbox = sandbox_factory(timeout=2, on_timeout="pause")
    sbx.commands.run("sleep 1000", background=True)
    sbx.files.write("/home/user/x", "still here")
    deadline = time.monotonic() + 20
    while sbx.info().state != "paused" and time.monotonic() < deadline:
        time.sleep(0.25)
    paused = sbx.info()
    assert paused.state == "paused" and paused.ends_at is None and paused.remaining == 2
    assert sbx.files.read("/home/user/x") == "still here"  # a call resumes it, with a whole timeout again
    resumed = sbx.info()
    assert resumed.state == "running" and resumed.ends_at is not None
    assert "sleep 1000" in sbx.commands.run("ps ax").stdout


def test_set_timeout_on_a_paused_sandbox_runs_from_its_resume(sandbox_factory: Callable[..., Any]) -> None:
    sbx: Sandbox = sandbox_factory(timeout=300)
    sbx.pause()
    info = sbx.set_timeout(60)
    assert info.state == "paused" and info.ends_at is None and info.remaining == 60
    resumed = sbx.resume()
    assert resumed.ends_at is not None and resumed.remaining is None


def test_a_command_is_not_killed_for_the_time_its_sandbox_was_paused(sandbox_factory: Callable[..., Any]) -> None:
    """Paused time counts toward a command's timeout no more than toward its sandbox's: it was frozen."""
    sbx: Sandbox = sandbox_factory()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(sbx.commands.run, "sleep 2; echo done", timeout=4)
        deadline = time.monotonic() + 30
        while not sbx.commands.list():  # it runs
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sbx.pause()
        time.sleep(5)  # past its timeout, all of it paused
        sbx.resume()
        assert running.result(timeout=60).stdout == "done\n"  # it was an ExecTimeout at once
    with pytest.raises(ExecTimeout):  # its own time still counts
        sbx.commands.run("sleep 30", timeout=1)


def test_cli_pause_and_resume(sandbox_factory: Callable[..., Any], corral_url: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    sbx: Sandbox = sandbox_factory()
    corral = str(Path(sys.executable).with_name("corral"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}, "CORRAL_URL": corral_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([corral, *args], capture_output=True, text=True, env=env, timeout=60)

    assert run("sandbox", "pause", sbx.id).stdout == f"{sbx.id} is paused\n"
    assert '"state": "paused"' in run("sandbox", "info", sbx.id, "--json").stdout  # looking does not resume it
    again = run("sandbox", "pause", sbx.id)
    assert again.returncode == 1 and again.stderr.startswith("error: sandbox_paused:")
    assert run("sandbox", "resume", sbx.id).stdout == f"{sbx.id} is running\n"
