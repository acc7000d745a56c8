"""Shared fixtures: a real corral server per test worker and a sandbox factory.

Real over fake: the server is ``corral serve`` in a child process, driving
real gVisor sandboxes built from the real default image. ``make test``
(through ``scripts/setup``) installs everything these need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess, worker_index


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("corral-data")).start()
    try:
        yield proc
    finally:
        kill_all(proc.url)
        proc.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own (and its own address range), for tests that kill it."""
    proc = ServerProcess(tmp_path / "data", subnet_index=20 + worker_index()).start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is not None:
            proc.start()
        kill_all(proc.url)
        proc.stop()


def kill_all(url: str, api_key: str | None = None) -> None:
    headers = {"X-API-Key": api_key} if api_key else {}
    with contextlib.suppress(httpx.HTTPError):
        found = httpx.get(f"{url}/v1/sandboxes", headers=headers, timeout=30).json()["sandboxes"]
        for sbx in found:
            httpx.delete(f"{url}/v1/sandboxes/{sbx['id']}", headers=headers, timeout=60)


@pytest.fixture
def corral_url(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CORRAL_URL", server.url)
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    return server.url


@pytest.fixture
def sandbox_factory(corral_url: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    """Create sandboxes tagged with the test's name; all are killed afterwards."""
    from corral import Sandbox

    made: list[Sandbox] = []

    def make(**kwargs: object) -> Sandbox:
        metadata = {"test": request.node.name[:200], **dict(kwargs.pop("metadata", {}) or {})}  # type: ignore[call-overload]
        sbx = Sandbox.create(metadata=metadata, **kwargs)  # type: ignore[arg-type]
        made.append(sbx)
        return sbx

    yield make
    failed = getattr(request.node, "rep_call", None)
    for sbx in made:
        if failed is not None and failed.failed:
            print(f"sandbox of failed test: {sbx.id}")
        with contextlib.suppress(Exception):
            sbx.kill()
        with contextlib.suppress(Exception):
            sbx.close()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., object]) -> object:
    return sandbox_factory()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if "e2e" in Path(str(item.fspath)).relative_to(here).parts:
            item.add_marker(pytest.mark.runsc)
