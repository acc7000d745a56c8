"""Hostile workloads: each case is a real program in a real sandbox, trying something it must not manage.

Every case asserts two things: that the attack failed, and (through the
autouse ``unaffected`` fixture) that the server still answers and a
bystander sandbox, made once per module, still runs commands and keeps its
files, untouched.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def bystander(server: ServerProcess) -> Iterator[Sandbox]:
    sbx = Sandbox.create(url=server.url, metadata={"test": "hostile-bystander"})
    sbx.files.write("/home/user/keep.txt", "bystander's data")
    yield sbx
    sbx.kill()
    sbx.close()


@pytest.fixture(autouse=True)
def unaffected(server: ServerProcess, bystander: Sandbox) -> Iterator[None]:
    yield
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200, "the server stopped answering"
    assert bystander.commands.run("echo alive", timeout=60).stdout == "alive\n", "the bystander stopped answering"
    assert bystander.files.read("/home/user/keep.txt") == "bystander's data", "the bystander's files changed"


@pytest.fixture
def victim(sandbox_factory) -> Sandbox:
    return sandbox_factory()


@pytest.fixture
def host_secret(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A file on the host with a secret in it: no sandbox may read it by any path."""
    secret = f"host-secret-{secrets.token_hex(8)}"
    path = Path("/tmp") / f"corral-hostile-{secrets.token_hex(4)}"
    path.write_text(secret)
    yield path, secret
    path.unlink(missing_ok=True)
