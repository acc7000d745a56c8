"""The server is only a controller: kill -9 it, start it again, lose nothing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from corral import Sandbox
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
