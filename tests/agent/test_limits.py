"""The limits the agent enforces from inside: the OOM killer and RLIMIT_NPROC."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.agent.conftest import USER_UID, Agent, UserWorld, start_agent, stop
from tests.agent.helpers import server_stream, sh, start_message


@pytest.fixture(scope="module")
def limited_agent(tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld) -> Iterator[Agent]:
    running = start_agent(
        tmp_path_factory.mktemp("limited-agent"),
        env={
            "CORRAL_AGENT_MEMORY_LIMIT_MB": "64",
            "CORRAL_AGENT_PIDS_LIMIT": "20",
            "CORRAL_AGENT_ETC": str(user_world.etc),
        },
    )
    try:
        yield running
    finally:
        stop(running.process)
        print(running.log())


def test_memory_hog_is_killed(limited_agent: Agent) -> None:
    hog = "import time\nx = bytearray(200 << 20)\ntime.sleep(20)\n"
    with httpx.Client(base_url=limited_agent.url, timeout=30) as c:
        start = start_message(sys.executable, "-c", hog)
        result = server_stream(c, "process.Process/Start", start, user="root")
        after = server_stream(c, "process.Process/Start", sh("echo still here"), user="root")
    assert result.exit["status"] == "signal: killed"
    assert after.output("stdout") == b"still here\n"
    assert "oom:" in limited_agent.log()


def test_pids_limit_refuses_forks_past_it(limited_agent: Agent) -> None:
    # As `user`, try to start 40 sleeps; the shell dies at the first fork refused.
    with httpx.Client(base_url=limited_agent.url, timeout=30) as c:
        bomb = server_stream(c, "process.Process/Start", sh("for i in $(seq 40); do sleep 5 & done; wait"))
        count = server_stream(c, "process.Process/Start", sh(f"ps -o pid= -u {USER_UID}"), user="root")
        server_stream(c, "process.Process/Start", sh(f"pkill -KILL -u {USER_UID}; true"), user="root")
    assert b"fork" in bomb.output("stderr").lower()
    assert 0 < len(count.output("stdout").split()) <= 20
