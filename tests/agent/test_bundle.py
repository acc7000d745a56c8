"""The self-contained agent bundle: built once, and it runs with no help from the rootfs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from corral.images.agent_bundle import agent_command, agent_env, build_agent_bundle
from tests.agent.conftest import free_port, wait_healthy
from tests.agent.helpers import server_stream, sh

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
RAW = {"Content-Type": "application/octet-stream"}
# Docker's default set, as sandboxes get: enough to switch users and chown.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
RUNSC_CANDIDATES = (
    os.environ.get("CORRAL_RUNSC_PATH"),
    "/usr/local/lib/corral/bin/runsc",
    "/tmp/runsc-new/usr/bin/runsc",
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_bundle(tmp_path_factory.mktemp("bundles"))


def busybox_rootfs(root: Path) -> Path:
    """A rootfs with a static busybox and nothing else: no libc, no /etc."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for name in ("sh", "echo", "cat", "ls", "id", "sleep", "ps", "pwd", "stat", "stty", "tty"):
        (root / "bin" / name).symlink_to("busybox")
    for name in (".corral", "tmp", "proc", "dev", "root"):
        (root / name).mkdir()
    return root


def exercise(url: str, scratch: str = "/tmp") -> None:
    """What the agent must do in any rootfs: run commands and move files (under ``scratch``)."""
    with httpx.Client(base_url=url, timeout=30) as c:
        command = sh("echo hello from $(id -u); ls /")
        result = server_stream(c, "process.Process/Start", command, user="root")
        assert result.error is None, result.error
        assert result.exit["exitCode"] == 0, result.output("stderr")
        assert result.output("stdout").decode().startswith("hello from 0\n")
        path = f"{scratch}/up/file.txt"
        params = {"path": path, "username": "root"}
        upload = c.post("/files", params=params, files={"file": ("file.txt", b"payload")})
        assert upload.status_code == 200, upload.text
        assert c.get("/files", params=params).content == b"payload"


def test_bundle_is_built_once_and_complete(bundle: Path) -> None:
    assert build_agent_bundle(bundle.parent) == bundle  # cached
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]  # no build leftovers
    manifest = json.loads((bundle / "BUNDLE").read_text())
    assert manifest["command"] == agent_command(49983)
    assert (bundle / "lib" / "ld-linux-x86-64.so.2").exists()
    assert os.access(bundle / "bin" / "python3", os.X_OK)
    for name in ("libc.so.6",):
        assert (bundle / "lib" / name).exists()
    pylib = next((bundle / "lib").glob("python3.*"))
    assert (pylib / "os.py").exists()
    assert (pylib / "corral" / "agent" / "main.py").exists()
    assert list((pylib / "asyncio" / "__pycache__").glob("*.pyc"))
    assert not (pylib / "ssl.py").exists()  # kept small: no OpenSSL
    assert agent_command(1234)[-2:] == ["--port", "1234"]
    assert agent_env() == {}


def _bundle_argv(bundle_dir: str, port: int) -> list[str]:
    argv = [arg.replace("/.corral", bundle_dir, 1) for arg in agent_command(port)]
    return [*argv, "--host", "127.0.0.1"]


@contextmanager
def running_agent(argv: list[str], log: Path) -> Iterator[str]:
    port = int(argv[argv.index("--port") + 1])
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/bin"})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log.read_text(errors="replace"))


def test_bundle_runs_on_the_host_debian(bundle: Path, tmp_path: Path) -> None:
    # The host is Debian: the bundle's loader and libc run next to the system's own.
    with running_agent(_bundle_argv(str(bundle), free_port()), tmp_path / "agent.log") as url:
        exercise(url, scratch=str(tmp_path))


def test_bundle_runs_in_a_busybox_only_rootfs(bundle: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot and bind mounts need root")
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    subprocess.run(["mount", "--bind", str(bundle), str(rootfs / ".corral")], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(rootfs / ".corral")], check=True)
        argv = ["chroot", str(rootfs), *agent_command(free_port()), "--host", "127.0.0.1"]
        argv[0] = shutil.which("chroot") or "/usr/sbin/chroot"
        with running_agent(argv, tmp_path / "agent.log") as url:
            exercise(url)
    finally:
        subprocess.run(["umount", "-l", str(rootfs / ".corral")], check=False)


# --- gVisor -------------------------------------------------------------------


def _runsc() -> str | None:
    for candidate in RUNSC_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_subnet() -> tuple[str, str]:
    """A /30 in 10.251.0.0/16 no local interface uses: (host address, sandbox address)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        base = f"10.251.{random.randrange(256)}.{random.randrange(64) * 4}"
        prefix = base.rsplit(".", 1)[0] + "."
        last = int(base.rsplit(".", 1)[1])
        host, sandbox = f"{prefix}{last + 1}", f"{prefix}{last + 2}"
        if host not in used and sandbox not in used:
            return host, sandbox
    raise RuntimeError("no free /30 in 10.251.0.0/16")


@pytest.mark.runsc
def test_bundle_runs_as_pid_1_under_gvisor(bundle: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runsc needs root")
    runsc = _runsc()
    if runsc is None:
        pytest.skip("no runsc found (CORRAL_RUNSC_PATH, /usr/local/lib/corral/bin/runsc)")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    rootfs = busybox_rootfs(tmp_path / "bundle" / "rootfs")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\nstaff:x:1001:user\n")
    (rootfs / "home" / "user").mkdir(parents=True)
    os.chown(rootfs / "home" / "user", 1000, 1000)
    suffix = uuid.uuid4().hex[:8]
    container, netns = f"corral-agent-test-{suffix}", f"corral-agt-{suffix}"
    host_if, sandbox_if = f"cah{suffix}", f"cas{suffix}"
    host_ip, sandbox_ip = _free_subnet()
    state = tmp_path / "state"
    config = {
        "ociVersion": "1.0.2",
        "hostname": "agent-test",
        "root": {"path": str(rootfs), "readonly": False},
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": agent_command(49983),
            "env": ["PATH=/bin", *(f"{k}={v}" for k, v in agent_env().items())],
            "cwd": "/",
            "capabilities": {kind: CAPABILITIES for kind in ("bounding", "effective", "permitted")},
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/.corral", "type": "bind", "source": str(bundle), "options": ["rbind", "ro"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": f"/var/run/netns/{netns}"},
            ]
        },
    }
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", netns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", sandbox_if)
        ip("link", "set", sandbox_if, "netns", netns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", netns, "addr", "add", f"{sandbox_ip}/30", "dev", sandbox_if)
        ip("-n", netns, "link", "set", sandbox_if, "up")
        # Old runsc refuses --network=sandbox when /proc/sys/net/core/rmem_default
        # exists; hiding /proc/sys/net in a private mount namespace gets past it.
        run = (
            "mount -t tmpfs none /proc/sys/net && exec "
            f"{runsc} --root {state} --network=sandbox --overlay2=none "
            f"run -detach -bundle {tmp_path / 'bundle'} {container}"
        )
        with open(tmp_path / "console.log", "wb") as console:
            subprocess.run(
                ["unshare", "-m", "sh", "-c", run],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                check=True,
                timeout=60,
            )
        url = f"http://{sandbox_ip}:49983"
        wait_healthy(url, timeout=30)
        exercise(url)
        with httpx.Client(base_url=url, timeout=30) as c:
            # the agent is PID 1, and reaps the orphans re-parented to it
            parent = server_stream(c, "process.Process/Start", sh("echo $PPID; (sleep 0.2 &); true"))
            assert parent.output("stdout") == b"1\n"
            time.sleep(0.6)
            states = server_stream(c, "process.Process/Start", sh("cat /proc/[0-9]*/stat"))
            zombies = [line for line in states.output("stdout").decode().splitlines() if ") Z " in line]
            assert zombies == []
            # the image's `user` is the default one, with its groups, home and files
            who = server_stream(c, "process.Process/Start", sh("id -u; id -G; pwd"))
            assert who.output("stdout") == b"1000\n1000 1001\n/home/user\n"
            c.post("/files", params={"path": "notes.txt"}, content=b"x", headers=RAW)
            owner = server_stream(c, "process.Process/Start", sh("stat -c %u /home/user/notes.txt"))
            assert owner.output("stdout") == b"1000\n"
            # a PTY works under gVisor too
            tty = {"process": {"cmd": "/bin/sh", "args": ["-c", "tty; stty size"]}}
            terminal = server_stream(c, "process.Process/Start", {**tty, "pty": {"size": {"cols": 90, "rows": 33}}})
            assert b"/dev/pts/" in terminal.output("pty") and b"33 90" in terminal.output("pty")
        assert "corral-agent: listening" in (tmp_path / "console.log").read_text()
    finally:
        subprocess.run([runsc, "--root", str(state), "kill", container, "KILL"], capture_output=True)
        subprocess.run([runsc, "--root", str(state), "delete", "-force", container], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        print((tmp_path / "console.log").read_text(errors="replace") if (tmp_path / "console.log").exists() else "")
