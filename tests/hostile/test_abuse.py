"""Hostile programs that try to exhaust resources, trick the file API, break the API, or kill their agent."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import httpx
import pytest

from corral import (
    AgentUnavailable,
    CommandExitError,
    InvalidRequest,
    Sandbox,
    SandboxNotFound,
    SandboxNotRunning,
)
from corral.runtimes.consoles import console_path
from tests.hostile.test_escape import sh
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.runsc


# -- resources ----------------------------------------------------------------


KILL_ALL = """
import os, time
end = time.monotonic() + 60
while time.monotonic() < end and sum(name.isdigit() for name in os.listdir("/proc")) > 10:
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        pass
    time.sleep(0.02)
"""


@pytest.mark.hostile("resources", "fork bomb")
def test_fork_bomb(sandbox_factory) -> None:
    bomb = sandbox_factory()
    bomb.commands.run("b() { b & b & wait; }; b", background=True)
    time.sleep(4)
    # As root (the bomb runs as `user`, whose process limit it fills), kill everything again
    # and again without forking until few processes are left: what a kill misses forks anew.
    bomb.commands.run(["python3", "-c", KILL_ALL], user="root", timeout=120)
    assert bomb.commands.run("echo survived", user="root", timeout=60).stdout == "survived\n"

    def processes() -> int:
        return int(bomb.commands.run("ls /proc | grep -c '^[0-9]'", user="root").stdout)

    deadline = time.monotonic() + 60
    while processes() > 20 and time.monotonic() < deadline:  # the agent reaps what was killed
        time.sleep(1)
    assert processes() <= 20


@pytest.mark.hostile("resources", "memory bomb past the sandbox's limit")
def test_memory_bomb(sandbox_factory) -> None:
    hog = sandbox_factory(memory_mb=256)
    code, _ = sh(hog, "python3 -c 'x = []\nwhile True: x.append(bytearray(16 << 20))'", user=None)
    assert code in (137, -9)
    assert hog.commands.run("echo survived").stdout == "survived\n"


@pytest.mark.hostile("resources", "start 1,000 processes at once")
def test_thousand_processes(victim: Sandbox) -> None:
    script = (
        "import os, subprocess\n"
        "ps, refused = [], 0\n"
        "for _ in range(1000):\n"
        "    try: ps.append(subprocess.Popen(['sleep', '60']))\n"
        "    except OSError: refused += 1\n"
        "print(len(ps), refused)\n"
        "for p in ps: p.kill()\n"
    )
    victim.files.write("/tmp/many.py", script)
    started, refused = map(int, victim.commands.run("python3 /tmp/many.py", timeout=120).stdout.split())
    assert started + refused == 1000 and refused > 0  # the pids limit (512 for 512 MiB) stops it
    assert victim.commands.run("echo survived").stdout == "survived\n"


@pytest.mark.hostile("resources", "spin every CPU it has (neighbours' commands keep their latency)")
def test_cpu_spin(sandbox_factory, bystander: Sandbox) -> None:
    def latency() -> float:
        samples = []
        for _ in range(5):
            started = time.monotonic()
            bystander.commands.run("true")
            samples.append(time.monotonic() - started)
        return statistics.median(samples)

    quiet = latency()
    spinner = sandbox_factory(vcpus=1)
    spinner.commands.run("for i in 1 2 3 4; do (while :; do :; done) & done; wait", background=True)
    time.sleep(2)
    busy = latency()
    assert busy < max(1.0, 10 * quiet), (quiet, busy)  # a generous bound: it is held to its quota


@pytest.mark.hostile("resources", "fill its disk, as root: with empty files (inodes), then one huge file")
def test_fill_disk(sandbox_factory, bystander: Sandbox, server: ServerProcess) -> None:
    filler = sandbox_factory(disk_mb=96)
    many = "mkdir /many && cd /many && for i in $(seq 40000); do : > $i || break; done; ls | wc -l"
    _code, out = sh(filler, many, timeout=120)
    assert "No space left" in out, out[-500:]  # its inodes run out
    _code, out = sh(filler, "rm -rf /many; dd if=/dev/zero of=/fill bs=1M count=300 2>&1")
    assert "No space left" in out  # and then its blocks
    image = server.data_dir / "sandboxes" / filler.id / "disk.img"
    assert image.stat().st_blocks * 512 <= 110 << 20  # the host gave it what it asked for, no more
    assert filler.commands.run("echo alive").stdout == "alive\n"
    assert bystander.files.read("/home/user/keep.txt") == "bystander's data"
    assert bystander.commands.run("head -c 150000000 /dev/zero > /tmp/big && echo ok").stdout == "ok\n"
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.hostile("resources", "write without end to its agent's console (/proc/1/fd/1, a host file), as root")
def test_console_flood(sandbox_factory, bystander: Sandbox, server: ServerProcess) -> None:
    """The console is on the sandbox's own disk: the flood fills that, not the host's."""
    small = sandbox_factory(disk_mb=64)
    _code, out = sh(small, "head -c 200000000 /dev/zero > /proc/1/fd/1; echo exit=$?", timeout=120)
    assert "exit=1" in out, out[-500:]  # its disk is full: "No space left on device"
    sdir = server.data_dir / "sandboxes" / small.id
    console = console_path(sdir)
    assert console.stat().st_dev == (sdir / "disk").stat().st_dev != sdir.stat().st_dev  # on the disk's own fs
    assert console.stat().st_size <= 64 << 20
    assert small.commands.run("echo alive").stdout == "alive\n"  # the agent goes on, its log lines dropped
    logs = httpx.get(f"{server.url}/v1/sandboxes/{small.id}/logs", timeout=30)
    assert logs.status_code == 200 and len(logs.content) <= (4 << 20) + 200  # its end, however large it grew
    assert "bytes of earlier console left out]" in logs.text.splitlines()[0]
    assert bystander.commands.run("echo ok").stdout == "ok\n"


@pytest.mark.hostile("resources", "fill /dev/shm (a bounded tmpfs)")
def test_fill_shm(victim: Sandbox) -> None:
    _code, out = sh(victim, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 2>&1; df -m /dev/shm | tail -1")
    assert "No space left" in out
    assert int(victim.commands.run("du -sm /dev/shm | cut -f1").stdout) <= 64


@pytest.mark.hostile("resources", "print 50 MB to stdout as fast as it can, and 200 MB through a pipe")
def test_output_flood(victim: Sandbox, server: ServerProcess) -> None:
    r = victim.commands.run("head -c 200000000 /dev/zero | tr '\\000' x | wc -c", timeout=120)
    assert r.stdout.strip() == "200000000"
    received: list[int] = []
    victim.commands.run(
        "head -c 50000000 /dev/zero | tr '\\000' x", on_stdout=lambda chunk: received.append(len(chunk)), timeout=120
    )
    assert sum(received) == 50_000_000  # every byte streamed, none held back or lost
    assert httpx.get(f"{server.url}/health").status_code == 200


# -- the file API -------------------------------------------------------------


@pytest.mark.hostile("file API", "read ../../../etc/shadow through the file API")
def test_files_dotdot(victim: Sandbox) -> None:
    host = Path("/etc/shadow").read_text()
    inside = victim.files.read("/home/user/../../../../../../etc/shadow", user="root")
    assert inside != host and host.splitlines()[0] not in inside


@pytest.mark.hostile("file API", "read through a symlink to / made inside")
def test_files_symlink_to_root(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    victim.commands.run("ln -s / /home/user/root")
    with pytest.raises(Exception) as caught:
        victim.files.read(f"/home/user/root{path}")
    assert secret not in str(caught.value)
    assert "root:" in victim.files.read("/home/user/root/etc/shadow", user="root")  # its own /etc, not the host's


@pytest.mark.hostile("file API", "write through a symlink pointing at a host path")
def test_files_write_through_symlink(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    victim.commands.run(f"ln -s {path} /home/user/target")
    victim.files.write("/home/user/target", "overwritten")
    assert path.read_text() == secret  # the host file is untouched; the write stayed in the sandbox


@pytest.mark.hostile("file API", "swap a symlink back and forth while the API reads it (a race)")
def test_files_symlink_race(victim: Sandbox, host_secret: tuple[Path, str]) -> None:
    path, secret = host_secret
    victim.files.write("/home/user/plain", "plain")
    victim.commands.run(
        f"while :; do ln -sfn {path} /home/user/flip; ln -sfn /home/user/plain /home/user/flip; done", background=True
    )
    for _ in range(40):
        with contextlib.suppress(FileNotFoundError, InvalidRequest, LookupError):
            assert secret not in victim.files.read("/home/user/flip")


@pytest.mark.hostile("file API", "hard-link root's files to read them as the user")
def test_files_hardlink(victim: Sandbox) -> None:
    sh(victim, "echo topsecret > /root/secret && chmod 600 /root/secret")
    _code, out = sh(victim, "ln /root/secret /home/user/mine && cat /home/user/mine", user=None)
    assert "topsecret" not in out


@pytest.mark.hostile("file API", "upload a file larger than the server allows")
def test_files_too_large(victim: Sandbox, server: ServerProcess) -> None:
    import http.client
    import json

    limit = 4096 << 20  # CORRAL_MAX_UPLOAD_MB's default
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("PUT", f"/v1/sandboxes/{victim.id}/files?path=/tmp/big")
    conn.putheader("Content-Length", str(limit + 1))  # says 4 GiB and a byte; sends 64 KiB of it
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders(b"x" * 65536)
    answer = conn.getresponse()
    assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "payload_too_large"
    conn.close()
    assert victim.commands.run("ls /tmp/big 2>/dev/null; true").stdout == ""  # nothing half-written


@pytest.mark.hostile("file API", "file names with NUL bytes, newlines and 5,000 characters")
def test_files_odd_names(victim: Sandbox, server: ServerProcess) -> None:
    url = f"{server.url}/v1/sandboxes/{victim.id}/files"
    nul = httpx.put(url, params={"path": "/tmp/a\x00b"}, content=b"x")
    assert nul.status_code == 422 and nul.json()["error"]["code"] == "invalid_request"
    assert victim.files.write("/tmp/line\nbreak", "ok").name == "line\nbreak"
    assert victim.files.read("/tmp/line\nbreak") == "ok"
    long = httpx.put(url, params={"path": "/tmp/" + "a" * 5000}, content=b"x")
    assert long.status_code in (400, 409, 422) and "error" in long.json()


# -- the API ------------------------------------------------------------------


@pytest.mark.hostile("API", "a JSON body over the limit, and a malformed one")
def test_api_bodies(server: ServerProcess) -> None:
    big = httpx.post(f"{server.url}/v1/sandboxes", content=b'{"metadata": {"a": "' + b"x" * (2 << 20) + b'"}}')
    assert big.status_code == 413
    bad = httpx.post(f"{server.url}/v1/sandboxes", content=b'{"image": ', headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


@pytest.mark.hostile("API", "deeply nested JSON and wrong types everywhere")
def test_api_nesting(server: ServerProcess) -> None:
    deep = b'{"metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    r = httpx.post(f"{server.url}/v1/sandboxes", content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code in (413, 422) and "error" in r.json()
    r = httpx.post(f"{server.url}/v1/sandboxes", json={"vcpus": "lots", "memory_mb": [], "envs": 3})
    assert r.status_code == 422 and len(r.json()["error"]["details"]["errors"]) >= 3


@pytest.mark.hostile("API", "sandbox ids with path tricks (../, encoded slashes)")
def test_api_ids(server: ServerProcess) -> None:
    for sandbox_id in ("..", "..%2F..%2Fetc", "sb%00x", "a" * 300):
        r = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}/files", params={"path": "/etc/passwd"})
        assert r.status_code in (404, 422), (sandbox_id, r.status_code)
        assert "error" in r.json()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sbdoesnotexist", url=server.url)


@pytest.mark.hostile("API", "a command line of 1 MiB and 10,000 environment variables")
def test_api_huge_command(victim: Sandbox, server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/sandboxes/{victim.id}/exec", json={"cmd": "echo " + "x" * (1 << 20)})
    assert r.status_code in (200, 413, 422) and (r.status_code == 200 or "error" in r.json())
    envs = {f"V{i}": "y" * 50 for i in range(10_000)}
    r = httpx.post(f"{server.url}/v1/sandboxes/{victim.id}/exec", json={"cmd": "true", "envs": envs})
    assert r.status_code in (200, 413, 422)


@pytest.mark.hostile("API", "100 commands at once in one sandbox")
def test_api_concurrent_execs(victim: Sandbox, server: ServerProcess) -> None:
    import concurrent.futures

    def one(i: int) -> str:
        return victim.commands.run(f"echo {i}", timeout=120).stdout

    with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
        outputs = list(pool.map(one, range(100)))
    assert outputs == [f"{i}\n" for i in range(100)]


# -- the agent ----------------------------------------------------------------


@pytest.mark.hostile("agent", "kill the agent (PID 1) from inside as root")
def test_kill_the_agent(victim: Sandbox) -> None:
    with pytest.raises((AgentUnavailable, CommandExitError, SandboxNotRunning)):
        victim.commands.run("kill -9 1; sleep 5", user="root", timeout=30)
    deadline = time.monotonic() + 30
    while victim.info().state != "dead" and time.monotonic() < deadline:
        with pytest.raises((AgentUnavailable, SandboxNotRunning)):
            victim.commands.run("true", timeout=10)
    info = victim.info()
    assert info.state == "dead" and info.error  # reported, with what was seen


@pytest.mark.hostile("agent", "send the agent (PID 1) every signal it can catch, as root (kill 1, pkill -f python)")
def test_signal_the_agent(victim: Sandbox) -> None:
    every = "for s in TERM INT HUP QUIT USR1 USR2 ALRM VTALRM PROF IO XCPU PWR STKFLT $(seq 34 64); do kill -$s 1; done"
    assert sh(victim, f"{every}; pkill -f 'corral[.]agent'; echo sent", user="root", timeout=30) == (0, "sent\n")
    assert victim.commands.run("echo still answering", timeout=60).stdout == "still answering\n"  # it ended before
    assert "signal ignored" in victim.logs()


@pytest.mark.hostile("agent", "stop (SIGSTOP) every process it may signal")
def test_stop_everything(victim: Sandbox) -> None:
    sh(victim, "kill -STOP -1; sleep 1", user=None, timeout=30)
    assert victim.commands.run("echo still answering", timeout=60).stdout == "still answering\n"
