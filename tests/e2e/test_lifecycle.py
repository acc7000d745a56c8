"""Sandboxes' lifecycle on a real server: list, filter, info, timeouts, the reaper, logs."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.errors import SandboxNotFound, SandboxNotRunning
from tests.envelope import envelope_error
from tests.leftovers import kill_sandbox_process


def test_list_filters_by_metadata_and_state(sandbox_factory) -> None:
    a = sandbox_factory(metadata={"team": "red"})
    b = sandbox_factory(metadata={"team": "blue"})
    red = {s.id for s in Sandbox.list(metadata={"team": "red"})}
    assert a.id in red and b.id not in red
    running = {s.id for s in Sandbox.list(state="running")}
    assert {a.id, b.id} <= running
    info = a.get_info()
    assert info.state == "running" and info.metadata["team"] == "red"
    assert info.vcpus == 1 and info.memory_mb == 512


def test_list_in_pages(sandbox_factory, corral_url: str) -> None:
    tag = {"paged": uuid.uuid4().hex}
    made = [sandbox_factory(metadata=tag).id for _ in range(5)]
    seen: list[str] = []
    pages, token = 0, None
    while True:
        page = Sandbox.list_page(limit=2, next_token=token, metadata=tag)
        seen += [s.id for s in page.sandboxes]
        pages, token = pages + 1, page.next_token
        if token is None:
            break
    assert seen == made and pages == 3  # oldest first, each once
    assert Sandbox.list_page(limit=5, metadata=tag).next_token is None  # none left: no next page

    first = Sandbox.list_page(limit=2, metadata=tag)
    Sandbox.connect(first.sandboxes[-1].id).kill()  # the page's last sandbox goes: the next page still follows it
    rest = Sandbox.list_page(limit=10, next_token=first.next_token, metadata=tag)
    assert [s.id for s in rest.sandboxes] == made[2:] and rest.next_token is None
    assert [s.id for s in Sandbox.list(metadata=tag)] == made[:1] + made[2:]  # no limit: all at once

    for params in ({"limit": 0}, {"limit": 1001}, {"limit": 2, "next_token": "not-a-token"}):
        answer = httpx.get(f"{corral_url}/v1/sandboxes", params=params)
        error = envelope_error(answer.status_code, answer.headers["content-type"], answer.content)
        assert answer.status_code == 422 and error["code"] == "invalid_request", params


@pytest.mark.parametrize("state", ["running", "paused"])
def test_a_sandbox_whose_process_the_host_kills_is_dead_without_being_asked(state: str, sandbox_factory) -> None:
    """It stayed "running" until a call waited out the agent's connect timeout, and that call was a 502."""
    sbx = sandbox_factory()
    if state == "paused":
        sbx.pause()
    kill_sandbox_process(sbx.id)
    deadline = time.monotonic() + 15
    while (info := sbx.info()).state != "dead":
        assert time.monotonic() < deadline, info
        time.sleep(0.1)
    assert "exited on its own" in (info.error or "")
    with pytest.raises(SandboxNotRunning, match="is dead"):
        sbx.commands.run("true")


def test_a_sandbox_the_hosts_oom_killer_ends_is_dead_and_says_why(sandbox_factory) -> None:
    """Its host cgroup squeezed to just above what it uses: a 200 MB allocation inside makes the kernel end it."""
    sbx = sandbox_factory(memory_mb=512)
    v1 = Path(f"/sys/fs/cgroup/memory/corral/{sbx.id}")
    usage = v1 / "memory.usage_in_bytes" if v1.is_dir() else Path(f"/sys/fs/cgroup/corral/{sbx.id}/memory.current")
    limit = v1 / "memory.limit_in_bytes" if v1.is_dir() else usage.with_name("memory.max")
    limit.write_text(str(int(usage.read_text()) + (30 << 20)))
    with pytest.raises(SandboxNotRunning, match="OOM killer"):  # the command's call: it was "interrupted"
        sbx.commands.run("python3 -c 'x = bytearray(200 << 20); import time; time.sleep(5)'", timeout=60)
    info = sbx.info()
    assert info.state == "dead" and "OOM killer" in (info.error or "")


def test_a_kill_is_not_taken_for_a_death(sandbox_factory, server) -> None:
    """A kill ends the sandbox's process; the watch on it must not report that exit as the sandbox dying."""
    sandboxes = [sandbox_factory() for _ in range(6)]
    sandboxes[0].pause()
    time.sleep(1.5)  # the reaper's next round watches each
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(Sandbox.kill, sandboxes))
    time.sleep(1)
    ids = {s.id for s in sandboxes}
    lines = server.log_path.read_text().splitlines()
    died = [line for line in lines if "is dead" in line and any(i in line for i in ids)]
    assert died == []


def test_calls_running_when_their_sandbox_is_killed_say_so(sandbox_factory, server) -> None:
    """A kill cuts every command running in the sandbox: each says the sandbox was killed
    (they said it was checkpointed, and to follow the command again)."""
    sbx = sandbox_factory()
    handles = [sbx.commands.run("sleep 300", background=True) for _ in range(5)]
    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(sbx.commands.run, "sleep 301", timeout=0)
        streamed = pool.submit(sbx.commands.run, "sleep 302", timeout=0, on_stdout=print)
        deadline = time.monotonic() + 20
        while len(sbx.commands.list()) < 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        start = server.log_path.stat().st_size
        Sandbox.connect(sbx.id).kill()  # a client of its own: this one has calls in flight
        for call in (plain, streamed):
            with pytest.raises(SandboxNotFound, match=f"sandbox '{sbx.id}' was killed"):
                call.result(timeout=30)
    for handle in handles:
        with pytest.raises(SandboxNotFound, match="was killed"):
            handle.wait()
    time.sleep(0.5)
    with server.log_path.open("rb") as log:
        log.seek(start)
        assert b"never retrieved" not in log.read()


def test_connect_and_kill(sandbox_factory) -> None:
    sbx = sandbox_factory()
    again = Sandbox.connect(sbx.id)
    assert again.commands.run("echo same").stdout == "same\n"
    again.kill()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sbx.id)
    with pytest.raises(SandboxNotFound):
        sbx.commands.run("true")


def test_timeout_reaps_the_sandbox(sandbox_factory) -> None:
    sbx = sandbox_factory(timeout=2)
    assert sbx.get_info().ends_at is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sbx.id not in {s.id for s in Sandbox.list()}:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the reaper did not kill an expired sandbox")


def test_set_timeout_extends_life(sandbox_factory) -> None:
    sbx = sandbox_factory(timeout=3)
    sbx.set_timeout(120)
    time.sleep(4)
    assert sbx.commands.run("echo alive").stdout == "alive\n"
    sbx.set_timeout(0)
    assert sbx.get_info().ends_at is None


def test_logs_show_the_agent(sandbox) -> None:
    sandbox.commands.run("true")
    assert "agent" in sandbox.logs().lower()


def test_create_answers_with_a_ready_sandbox(corral_url: str, sandbox_factory) -> None:
    # No polling needed: the first exec right after create works.
    for _ in range(3):
        sbx = sandbox_factory()
        assert sbx.commands.run("echo ready").stdout == "ready\n"


def test_openapi_is_published(corral_url: str) -> None:
    doc = httpx.get(f"{corral_url}/openapi.json").json()
    assert "/v1/sandboxes" in doc["paths"]
    assert "/v1/sandboxes/{sandbox_id}/exec" in doc["paths"]


def test_a_create_a_snapshot_and_a_fork_need_no_body(corral_url: str) -> None:
    """Every field of theirs has a default: ``curl -X POST .../v1/sandboxes`` makes a sandbox."""
    made = httpx.post(f"{corral_url}/v1/sandboxes", timeout=60)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    copies: list[str] = []
    try:
        assert made.json()["image"] == "corral/base"
        snapshot = httpx.post(f"{corral_url}/v1/sandboxes/{sid}/snapshots", timeout=60)
        assert snapshot.status_code == 201, snapshot.text
        Sandbox.delete_snapshot(snapshot.json()["id"], url=corral_url)
        forked = httpx.post(f"{corral_url}/v1/sandboxes/{sid}/fork", timeout=60)
        assert forked.status_code == 201, forked.text
        copies = [c["id"] for c in forked.json()["sandboxes"]]
        assert len(copies) == 1
    finally:
        for each in (sid, *copies):
            httpx.delete(f"{corral_url}/v1/sandboxes/{each}", timeout=60)
