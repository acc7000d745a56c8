"""Shared fixtures: a real corral server per test worker and a sandbox factory.

Real over fake: the server is ``corral serve`` in a child process, driving
real gVisor sandboxes built from the real default image. ``make test``
(through ``scripts/setup``) installs everything these need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.address_ranges import take_a_range

take_a_range()  # before tests.serverproc reads CORRAL_TEST_SUBNET_BASE

from tests.serverproc import ServerProcess, unmount_under, worker_index  # noqa: E402

pytest_plugins = ["tests.hostile_report", "tests.hostcmds"]


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers mount their agent bundle read-only on the host: undo what any left in this run's tmp."""
    yield
    unmount_under(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("corral-data")).running() as proc:
        yield proc


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own (and its own address range), for tests that kill it."""
    proc = ServerProcess(tmp_path / "data", subnet_index=20 + worker_index())
    with proc.running():
        try:
            yield proc
        finally:
            if proc.proc is not None and proc.proc.poll() is not None:
                proc.start()  # the test killed it: back up, so that its sandboxes can be killed


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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark e2e tests ``runsc``; and make ``--dist loadgroup`` keep each ``xdist_group`` on one worker again.

    pytest-xdist 3.8 tags a grouped test by setting ``item._nodeid``; pytest 9
    keeps node ids in ``item._id``, so the tag was lost and every group was
    spread over the workers (tests that share a host-wide resource then ran at
    once). Set it where pytest 9 reads it.
    """
    here = Path(__file__).parent
    for item in items:
        if "e2e" in Path(str(item.fspath)).relative_to(here).parts:
            item.add_marker(pytest.mark.runsc)
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if names and "@" not in item.nodeid.rsplit("::", 1)[-1]:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
