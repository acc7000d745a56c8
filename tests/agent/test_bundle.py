"""The self-contained agent bundle: built once, and it runs with no help from the rootfs."""

from __future__ import annotations

import asyncio
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

from corral.images.agent_bundle import agent_command, agent_env, build_agent_bundle, bundle_intact
from corral.net.links import network_for_slot
from corral.runtimes.base import SandboxSpec
from corral.runtimes.oci import OciRuntime
from tests.agent.conftest import free_port, wait_healthy
from tests.agent.helpers import server_stream, sh
from tests.serverproc import worker_index

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
RAW = {"Content-Type": "application/octet-stream"}


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


def test_every_module_the_agent_imports_late_is_in_the_bundle(bundle: Path) -> None:
    """Imports inside functions escape the bundle's import scan; each must be shipped anyway."""
    import ast

    import corral.agent

    late: set[str] = set()
    for source in Path(corral.agent.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        late.update(alias.name for alias in inner.names)
                    elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                        late.add(inner.module)
    assert {"shutil", "termios", "urllib.parse", "ctypes"} <= late  # the scan itself works
    shipped = set(json.loads((bundle / "BUNDLE").read_text())["modules"])
    python = json.loads((bundle / "BUNDLE").read_text())["python"]
    listed = subprocess.run([python, "-I", "-S", "-c", "import sys; print(*sys.builtin_module_names)"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    built_in = set(listed.stdout.split())  # linked into the interpreter: nothing to ship
    assert late - built_in <= shipped, late - built_in - shipped


_IMPORTS_FROM_BYTECODE = """
import importlib, json, os, sys
import corral.agent.main
for name in json.load(open(sys.argv[1]))["modules"]:
    importlib.import_module(name)
specs = [getattr(m, "__spec__", None) for m in list(sys.modules.values())]
sources = [s for s in specs if s is not None and (s.origin or "").endswith(".py")]
print(json.dumps({
    "optimize": sys.flags.optimize,
    "sources": len(sources),
    "uncompiled": [s.name for s in sources if not os.path.exists(s.cached)],
    "docstring": corral.agent.main.__doc__,
}))
"""


def test_the_agent_interpreter_loads_its_modules_from_docstring_free_bytecode(bundle: Path) -> None:
    """With the agent's flags (``-OO`` among them), every module it imports has its bytecode in the bundle."""
    argv = [arg.replace("/.corral", str(bundle), 1) for arg in agent_command(1)]
    argv = argv[: argv.index("-m")]
    out = subprocess.run([*argv, "-c", _IMPORTS_FROM_BYTECODE, str(bundle / "BUNDLE")],
                         capture_output=True, text=True, env={"PATH": "/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["optimize"] == 2
    assert seen["sources"] > 50  # the agent and the stdlib it runs on
    assert seen["uncompiled"] == []  # else compiled again at each start (-B keeps nothing)
    assert seen["docstring"] is None


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


@pytest.mark.runsc
def test_bundle_runs_as_pid_1_under_gvisor(tmp_path: Path) -> None:
    """A busybox-only rootfs (no libc at all) under corral's own runsc runtime."""
    rootfs = busybox_rootfs(tmp_path / "image")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\nstaff:x:1001:user\n")
    (rootfs / "home" / "user").mkdir(parents=True)
    os.chown(rootfs / "home" / "user", 1000, 1000)
    spec = SandboxSpec(
        sandbox_id=f"sbagent{uuid.uuid4().hex[:8]}",
        image_layers=(rootfs,),
        network=network_for_slot(f"10.{251 - worker_index()}.0.0/16", random.randrange(1, 16000)),
    )
    runtime = OciRuntime(kind="runsc", data_dir=tmp_path / "data")
    handle = asyncio.run(runtime.create(spec))
    try:
        url = handle.agent_url
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
        assert "corral-agent: listening" in asyncio.run(runtime.logs(handle))
    finally:
        print(asyncio.run(runtime.logs(handle)))
        asyncio.run(runtime.destroy(handle))


def test_a_bundle_changed_on_disk_is_built_again(tmp_path: Path) -> None:
    bundle = build_agent_bundle(tmp_path)
    assert bundle_intact(bundle)
    (bundle / "bin" / "python3").write_bytes(b"")  # what a sandbox did once through gVisor's mount
    assert not bundle_intact(bundle)
    again = build_agent_bundle(tmp_path)
    assert again == bundle and bundle_intact(again)
    assert (again / "bin" / "python3").stat().st_size > 0
