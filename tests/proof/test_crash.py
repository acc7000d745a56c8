"""Crash safety: SIGKILL the server at seeded moments under load; nothing acknowledged is lost, nothing is orphaned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proof.crashdrill import Drill, Ledger, audit, orphans
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.load, pytest.mark.runsc, pytest.mark.xdist_group("proof")]

KILLS = 20
SEED = 20261202


@pytest.fixture
def crashing_server(tmp_path: Path) -> Iterator[ServerProcess]:
    # Its own server and address range: this test kills it, over and over.
    proc = ServerProcess(tmp_path / "data", subnet_index=10 + worker_index()).start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is not None:
            proc.start(timeout=60)
        proc.finish()


@pytest.mark.timeout(400)
def test_sigkill_under_load_loses_nothing_and_leaves_nothing(crashing_server: ServerProcess) -> None:
    drill = Drill(crashing_server, seed=SEED, max_sandboxes=3)
    kills = drill.run(KILLS)
    ledger = drill.ledger

    assert kills == KILLS
    # The load did get through between the kills (else the audit below proves nothing);
    # kills of sandboxes come once three are made, when the crashes leave time for it.
    assert ledger.created and ledger.files and ledger.execs, ledger
    problems = audit(crashing_server, ledger)
    assert problems == [], "\n".join(problems)


def test_the_audit_sees_loss_and_leftovers(crashing_server: ServerProcess) -> None:
    """The audit above would report each thing it looks for (else its silence would mean nothing)."""
    url = crashing_server.url
    r = httpx.post(f"{url}/v1/sandboxes", json={"metadata": {"test": "audit"}}, timeout=120)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert httpx.put(f"{url}/v1/sandboxes/{sid}/files", params={"path": "/home/user/f"}, content=b"abc").is_success

    assert audit(crashing_server, Ledger(created={sid}, files={(sid, "/home/user/f"): b"abc"})) == []
    lying = Ledger(created={sid, "sbnosuchthing0"}, files={(sid, "/home/user/f"): b"abd"}, killed={sid})
    problems = "\n".join(audit(crashing_server, lying))
    assert "acknowledged sandbox sbnosuchthing0 is lost" in problems
    assert f"acknowledged write {sid}:/home/user/f" in problems
    assert f"sandbox {sid} is still listed after its kill was acknowledged" in problems

    # Every part of a sandbox that had no row would be a leftover: its runtime, netns and mounts.
    log = crashing_server.log_path.read_text(errors="replace")
    left = orphans(crashing_server.data_dir, set(), subnet=crashing_server.env["CORRAL_SANDBOX_SUBNET"], log=log)
    assert any(p.startswith("runsc process") and p.endswith(sid) for p in left), left
    assert f"runsc state of unknown sandbox {sid}" in left
    assert f"network namespace corral-{sid} of unknown sandbox" in left
    assert any(p.startswith(f"mount {crashing_server.data_dir}/sandboxes/{sid}/rootfs ") for p in left), left
