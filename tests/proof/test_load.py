"""Load: 1,000 concurrent execs over 20 sandboxes through the async SDK, every one answered right."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterator

import pytest

from corral import AsyncSandbox
from tests.serverproc import ServerProcess, worker_index

# One group for the proof suites: each loads the host, and two at once starve each other.
pytestmark = [pytest.mark.load, pytest.mark.runsc, pytest.mark.anyio, pytest.mark.xdist_group("proof")]

SANDBOXES = 20
EXECS = 1000
CONCURRENCY = 64
CLIENT_KEEP_ALIVE = 5.0
"""Seconds httpx keeps an idle connection (its default ``keepalive_expiry``, the SDK's)."""
BOUND = 150.0
"""Seconds the whole run may take before it is stopped (a bound, not a speed claim: see bench/exec.py)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def load_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("load"), subnet_index=12 + worker_index()).running() as proc:
        yield proc


@pytest.mark.timeout(240)
async def test_a_thousand_concurrent_execs(load_server: ServerProcess) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    url = load_server.url

    async def create(i: int) -> AsyncSandbox:
        async with gate:
            return await AsyncSandbox.create(url=url, metadata={"load": str(i)}, timeout=600)

    async def run(i: int) -> tuple[int, str | None]:
        sbx = sandboxes[i % SANDBOXES]
        async with gate:
            try:
                # Output each exec can only get right if its own command ran: its number, doubled, in its sandbox.
                result = await sbx.commands.run(
                    f"echo {i} $(({i} * 2)) $CORRAL_LOAD_ID", envs={"CORRAL_LOAD_ID": sbx.id}
                )
            except Exception as exc:
                return i, f"{type(exc).__name__}: {exc}"
        expected = f"{i} {i * 2} {sbx.id}\n"
        if (result.exit_code, result.stdout, result.stderr) != (0, expected, ""):
            return (
                i,
                f"exit {result.exit_code}, stdout {result.stdout!r} (expected {expected!r}), stderr {result.stderr!r}",
            )
        return i, None

    sandboxes: list[AsyncSandbox] = []
    try:
        async with asyncio.timeout(BOUND):
            made = await asyncio.gather(*(create(i) for i in range(SANDBOXES)), return_exceptions=True)
            sandboxes = [s for s in made if isinstance(s, AsyncSandbox)]
            assert len(sandboxes) == SANDBOXES, [m for m in made if not isinstance(m, AsyncSandbox)]
            outcomes = await asyncio.gather(*(run(i) for i in range(EXECS)))
    finally:
        for sbx in sandboxes:
            await sbx.kill()
            await sbx.close()
    failures = [(i, why) for i, why in outcomes if why is not None]
    assert len(outcomes) == EXECS
    assert failures == [], f"{len(failures)} of {EXECS} execs failed, first: {failures[:5]}"


def test_an_idle_connection_outlives_the_clients_keep_alive(load_server: ServerProcess) -> None:
    """Found by the load above: now and then an exec failed with a ReadError.

    httpx (the SDK's client) keeps an idle connection for 5 s, and so did the
    server: one that closes it as the client sends the next request on it
    fails that request. The server keeps idle connections longer than clients do.
    """
    conn = http.client.HTTPConnection("127.0.0.1", load_server.port, timeout=30)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        time.sleep(CLIENT_KEEP_ALIVE + 1)  # idle past the client's own expiry: the server must not close first
        conn.request("GET", "/health")  # on the same socket (http.client opens a new one only once it is closed)
        second = conn.getresponse()
        assert conn.sock is sock and second.status == 200 and second.read()
    finally:
        conn.close()
