"""Sandboxes under plain ``runc`` (CORRAL_RUNTIME=runc): host kernel, same API.

runc is for trusted code: its sandboxes are ordinary containers, so their
processes are host processes in the sandbox's cgroup, which enforces the
limits itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import CommandExitError, Sandbox
from corral.errors import SandboxNotFound
from corral.runtimes.oci import upper_dir
from tests.serverproc import ServerProcess, worker_index

pytestmark = pytest.mark.runc

MEMORY_MB = 64


@pytest.fixture(scope="module")
def runc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("runc") / "data",
        subnet_index=40 + worker_index(),
        env={"CORRAL_RUNTIME": "runc"},
    )
    with proc.running():
        yield proc


@pytest.fixture(scope="module")
def sbx(runc_server: ServerProcess) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(url=runc_server.url, memory_mb=MEMORY_MB, metadata={"test": "test_runc"})
    try:
        yield sandbox
    finally:
        sandbox.kill()
        sandbox.close()


def _host_memory_in_use() -> int:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) << 10
    return fields["MemTotal"] - fields["MemAvailable"]


def test_runs_on_the_host_kernel(sbx: Sandbox) -> None:
    info = sbx.info()
    assert info.runtime == "runc" and info.state == "running"
    # gVisor answers with its own kernel version; runc shares the host's.
    assert sbx.commands.run("uname -r").stdout.strip() == os.uname().release
    assert sbx.commands.run("hostname; whoami").stdout == "corral\nuser\n"


def test_files_round_trip(sbx: Sandbox, runc_server: ServerProcess) -> None:
    sbx.files.write("/home/user/notes/a.txt", "written through the API\n")
    assert sbx.files.read("/home/user/notes/a.txt") == "written through the API\n"
    assert sbx.commands.run("cat notes/a.txt; echo more >> notes/a.txt").stdout == "written through the API\n"
    assert sbx.files.read("/home/user/notes/a.txt") == "written through the API\nmore\n"
    # The write landed in the sandbox's overlay upper dir on the host.
    upper = upper_dir(runc_server.data_dir / "sandboxes" / sbx.id) / "home" / "user" / "notes" / "a.txt"
    assert upper.read_text() == "written through the API\nmore\n"


def test_memory_limit_is_the_kernels(sbx: Sandbox) -> None:
    # The host uses more than the sandbox's limit: that must not count against the sandbox.
    assert _host_memory_in_use() > MEMORY_MB << 20
    assert sbx.commands.run("sleep 0.5; echo survived").stdout == "survived\n"
    cgroup = Path("/sys/fs/cgroup/memory/corral") / sbx.id / "memory.limit_in_bytes"
    if cgroup.exists():  # cgroup v1 / hybrid, as on this host
        assert int(cgroup.read_text()) == MEMORY_MB << 20
    with pytest.raises(CommandExitError) as info:
        sbx.commands.run("python3 -c 'b = bytearray(200 << 20); print(len(b))'")
    assert info.value.exit_code == 137
    assert sbx.commands.run("echo still here").stdout == "still here\n"


def test_kill_removes_it(runc_server: ServerProcess) -> None:
    doomed = Sandbox.create(url=runc_server.url, metadata={"test": "test_kill_removes_it"})
    try:
        assert doomed.commands.run("echo up").stdout == "up\n"
        init = _runc_state(doomed.id)
        assert init is not None and init["status"] == "running"
        init_pid = int(init["pid"])  # a host process: runc shares the host's kernel
        assert b"/.corral/bin/python3" in Path(f"/proc/{init_pid}/cmdline").read_bytes()  # the agent
    finally:
        doomed.kill()
        doomed.close()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(doomed.id, url=runc_server.url)
    # Its processes die at once; disk, runtime state and namespace go in the background.
    sdir = runc_server.data_dir / "sandboxes" / doomed.id
    netns = Path(f"/var/run/netns/corral-{doomed.id}")

    def leftovers() -> list[str]:
        found = [str(p) for p in (sdir, netns) if p.exists()]
        if _alive(init_pid):
            found.append(f"pid {init_pid}")
        if _runc_state(doomed.id) is not None:
            found.append("runc state")
        return found

    deadline = time.monotonic() + 20
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers() == []


def _runc_state(sandbox_id: str) -> dict[str, object] | None:
    done = subprocess.run(["runc", "--root", "/run/corral/runc", "state", sandbox_id], capture_output=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
