"""The agent, run as an ordinary host process on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

USER_UID = 4321
EXTRA_GID = 4400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the agent exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 204:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"the agent at {url} never became healthy")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_agent(log_dir: Path, *args: str, env: dict[str, str] | None = None) -> Agent:
    port = free_port()
    log_path = log_dir / f"agent-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "corral.agent", "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    agent = Agent(port, process, log_path)
    try:
        wait_healthy(agent.url, process)
    except BaseException:
        stop(process)
        print(agent.log())
        raise
    return agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """An agent with the host's users (so root is the default user)."""
    running = start_agent(tmp_path_factory.mktemp("agent"))
    try:
        yield running
    finally:
        stop(running.process)
        print(running.log())


@pytest.fixture
def client(agent: Agent) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        yield c


@dataclass
class UserWorld:
    """A directory anyone may enter, holding an ``etc`` with a ``user`` and a home for it."""

    root: Path
    etc: Path
    home: Path


@pytest.fixture(scope="module")
def user_world() -> Iterator[UserWorld]:
    # Not under pytest's tmp_path: that is 0700, and the user must reach its home.
    root = Path(tempfile.mkdtemp(prefix="corral-agent-users-"))
    try:
        root.chmod(0o755)
        etc = root / "etc"
        home = root / "home" / "user"
        etc.mkdir()
        home.mkdir(parents=True)
        os.chown(home, USER_UID, USER_UID)
        (etc / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nuser:x:{USER_UID}:{USER_UID}::{home}:/bin/sh\n")
        (etc / "group").write_text(f"root:x:0:\nuser:x:{USER_UID}:\nextra:x:{EXTRA_GID}:someone,user\n")
        yield UserWorld(root, etc, home)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def user_agent(tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld) -> Iterator[Agent]:
    """An agent reading ``user_world``'s passwd, so its default user is ``user``."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    running = start_agent(tmp_path_factory.mktemp("user-agent"), env={"CORRAL_AGENT_ETC": str(user_world.etc)})
    try:
        yield running
    finally:
        stop(running.process)
        print(running.log())
