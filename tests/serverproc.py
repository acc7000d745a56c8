"""A real ``corral serve`` in a child process, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from corral.net import firewall, links

IMAGES = Path(os.environ.get("CORRAL_TEST_IMAGES", "/var/lib/corral/images"))


class PortTaken(RuntimeError):
    """The server could not listen: a port picked for it was taken meanwhile."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Second octet of test servers' sandbox subnets is SUBNET_BASE + an index (+0..53):
# two test runs on one host at once need different bases (tests/address_ranges.py sees to it).
SUBNET_BASE = int(os.environ.get("CORRAL_TEST_SUBNET_BASE", "200"))


def worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


class ServerProcess:
    """``corral serve`` on 127.0.0.1 with its own data dir and address range.

    The image store is shared (a symlink to the one ``scripts/setup`` built)
    unless ``shared_images`` is false; everything else is the test's own, so
    tests never see a developer's sandboxes.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        subnet_index: int | None = None,
        env: dict[str, str] | None = None,
        shared_images: bool = True,
    ):
        self.data_dir = data_dir
        self.shared_images = shared_images
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        index = worker_index() if subnet_index is None else subnet_index
        self.env = {
            **os.environ,
            "CORRAL_DATA_DIR": str(data_dir),
            "CORRAL_PORT": str(self.port),
            "CORRAL_SANDBOX_SUBNET": f"10.{SUBNET_BASE + index}.0.0/16",
            "CORRAL_PREVIEW_PORT": str(free_port()),
            # Test sandboxes resolve no name unless a test gives them a resolver of its own
            # (tests/networld.py): this loopback port answers nothing, so no query leaves the host.
            "CORRAL_DNS_SERVERS": '["127.0.0.1:9"]',
            "CORRAL_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.answered = False
        """Whether it has answered once (from then on its ports are its own)."""

    def start(self, timeout: float = 90.0) -> ServerProcess:
        """Start it and wait for its answer. Until it has answered once, a port another
        process took since it was picked (the API's or the preview proxy's) is picked again."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if self.answered or attempt == 2:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                self.env.update(CORRAL_PORT=str(self.port), CORRAL_PREVIEW_PORT=str(free_port()))
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        images = self.data_dir / "images"
        if self.shared_images and not images.exists():
            images.symlink_to(IMAGES)
        log = self.log_path.open("ab")
        log_start = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from corral.server.serve import run_server; run_server()"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                taken = b"address already in use" in self.log_path.read_bytes()[log_start:]
                said = f"server exited with {self.proc.returncode}:\n{self.log()}"
                raise PortTaken(said) if taken else RuntimeError(said)
            try:
                # A generous wait per try: on a loaded 2-core host a first answer can take seconds.
                if httpx.get(f"{self.url}/health", timeout=10.0, trust_env=False).status_code == 200:
                    self.answered = True
                    return self
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer within {timeout}s (last: {last!r}):\n{self.log()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    @contextlib.contextmanager
    def running(self, *, api_key: str | None = None) -> Iterator[ServerProcess]:
        """Started for the length of a ``with``; then its sandboxes are killed and it stops."""
        self.start()
        try:
            yield self
        finally:
            self.finish(api_key=api_key)

    def finish(self, *, api_key: str | None = None) -> None:
        """Kill its sandboxes, stop it, and remove what it leaves on the host for them."""
        kill_all(self.url, api_key)
        self.stop()
        # Its sandboxes are gone: so may its firewall table and its read-only agent
        # bundle mount be (a real server leaves both for the sandboxes that outlive it).
        subnet = self.env["CORRAL_SANDBOX_SUBNET"]
        table = firewall.table_name(subnet)
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, check=False)
        asyncio.run(links.Links.remove_spares(subnet))  # a server killed with -9 leaves its links made ahead
        unmount_under(self.data_dir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


def unmount_under(directory: Path) -> None:
    """Lazily unmount whatever is still mounted below ``directory`` (deepest first)."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def kill_all(url: str, api_key: str | None = None) -> None:
    """Kill every sandbox a server has (tests' clean-up)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with contextlib.suppress(httpx.HTTPError):
        found = httpx.get(f"{url}/v1/sandboxes", headers=headers, timeout=30).json()["sandboxes"]
        for sbx in found:
            httpx.delete(f"{url}/v1/sandboxes/{sbx['id']}", headers=headers, timeout=60)
