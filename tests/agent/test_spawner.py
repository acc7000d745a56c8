"""Commands as another user through that user's spawner: same behaviour as a direct start, no fork of the agent."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.agent.conftest import EXTRA_GID, USER_UID, Agent, UserWorld, start_agent, stop
from tests.agent.helpers import live_stream, server_stream, sh, start_message, unary

START = "process.Process/Start"


@pytest.fixture(scope="module")
def spawner_agent(tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld) -> Iterator[Agent]:
    """An agent whose default user is ``user``, with that user's spawner ready."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    running = start_agent(tmp_path_factory.mktemp("spawner-agent"), env={"CORRAL_AGENT_ETC": str(user_world.etc)})
    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            first = server_stream(c, START, sh("echo $PPID"))  # the first command starts its spawner
        assert int(first.output("stdout")) == running.process.pid
        wait_ready(running, 1)
        yield running
    finally:
        stop(running.process)
        print(running.log())


def wait_ready(agent: Agent, count: int, timeout: float = 30.0) -> None:
    """Until the log says ``spawner ready`` ``count`` times."""
    deadline = time.monotonic() + timeout
    while agent.log().count("spawner ready") < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no spawner became ready:\n{agent.log()}")
        time.sleep(0.05)


def spawner_pids(agent: Agent) -> list[int]:
    return [int(line.rsplit("pid=", 1)[1]) for line in agent.log().splitlines() if "spawner ready" in line]


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_commands_as_the_user_are_the_spawners_children(spawner_agent: Agent, user_world: UserWorld) -> None:
    (spawner_pid,) = spawner_pids(spawner_agent)
    script = 'id -u; id -g; id -G; echo "$HOME|$USER|$GREETING"; pwd; ls /proc/self/fd; echo $PPID'
    with httpx.Client(base_url=spawner_agent.url, timeout=30) as c:
        result = server_stream(c, START, sh(script, envs={"GREETING": "hi"}, cwd="/tmp"))
    lines = result.output("stdout").decode().splitlines()
    uid, gid, groups, env, cwd, *fds, ppid = lines
    assert (uid, gid) == (str(USER_UID), str(USER_UID))
    assert set(groups.split()) == {str(USER_UID), str(EXTRA_GID)}
    assert env == f"{user_world.home}|user|hi"
    assert cwd == "/tmp"
    assert sorted(int(fd) for line in fds for fd in line.split()) == [0, 1, 2, 3]  # 3: ls's own directory
    assert int(ppid) == spawner_pid
    assert result.exit["exitCode"] == 0


def test_the_spawner_runs_as_the_user(spawner_agent: Agent) -> None:
    (spawner_pid,) = spawner_pids(spawner_agent)
    with open(f"/proc/{spawner_pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    assert status["Uid"].split() == [str(USER_UID)] * 4
    assert status["Gid"].split() == [str(USER_UID)] * 4
    assert set(status["Groups"].split()) == {str(USER_UID), str(EXTRA_GID)}
    assert parent_of(spawner_pid) == spawner_agent.process.pid


def test_exit_codes_signals_and_stdin(spawner_agent: Agent) -> None:
    with httpx.Client(base_url=spawner_agent.url, timeout=30) as c:
        failed = server_stream(c, START, sh("exit 3"))
        killed = server_stream(c, START, sh("kill -KILL $$"))
        empty = server_stream(c, START, sh("cat; echo done", stdin=False))
        with live_stream(c, START, start_message("/bin/cat")) as frames:
            _, start = next(frames)
            pid = start["event"]["start"]["pid"]
            unary(c, "process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": "aGkK"}})
            _, data = next(frames)
            unary(c, "process.Process/CloseStdin", {"process": {"pid": pid}})
            end = [m for flags, m in frames if flags == 0][-1]["event"]["end"]
    assert failed.exit["exitCode"] == 3
    assert killed.exit["status"] == "signal: killed"
    assert empty.output("stdout") == b"done\n"
    assert data["event"]["data"]["stdout"] == "aGkK"
    assert end["exitCode"] == 0


def test_signals_reach_the_process_group(spawner_agent: Agent) -> None:
    with (
        httpx.Client(base_url=spawner_agent.url, timeout=30) as c,
        live_stream(c, START, sh("sleep 30 & echo $!; wait")) as frames,
    ):
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        _, data = next(frames)
        child = int(base64.b64decode(data["event"]["data"]["stdout"]))
        assert os.getpgid(child) == pid  # the command leads its own group and session
        assert os.getsid(pid) == pid
        unary(c, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGTERM"})
        end = [m for flags, m in frames if flags == 0][-1]["event"]["end"]
    assert end["status"] == "signal: terminated"


def test_a_command_too_large_for_the_spawner_starts_without_it(spawner_agent: Agent) -> None:
    big = "x" * (100 * 1024)
    with httpx.Client(base_url=spawner_agent.url, timeout=30) as c:
        result = server_stream(c, START, sh("echo ${#BIG} $PPID; id -u", envs={"BIG": big}))
    size, parent, uid = result.output("stdout").decode().split()
    assert (int(size), int(parent), uid) == (len(big), spawner_agent.process.pid, str(USER_UID))


def test_start_errors_are_the_same(spawner_agent: Agent) -> None:
    with httpx.Client(base_url=spawner_agent.url, timeout=30) as c:
        missing = server_stream(c, START, start_message("no-such-program-here"))
        private = server_stream(c, START, start_message("/bin/true", cwd="/root"))
    assert missing.error is not None and missing.error["code"] == "invalid_argument"
    assert "No such file or directory: 'no-such-program-here'" in missing.error["message"]
    assert private.error is not None and "Permission denied: '/root'" in private.error["message"]


def test_a_killed_spawner_is_replaced(tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    agent = start_agent(tmp_path_factory.mktemp("killed-spawner"), env={"CORRAL_AGENT_ETC": str(user_world.etc)})
    try:
        with httpx.Client(base_url=agent.url, timeout=30) as c:
            server_stream(c, START, sh("true"))
            wait_ready(agent, 1)
            with live_stream(c, START, start_message("/bin/sleep", "30")) as frames:
                next(frames)
                (spawner_pid,) = spawner_pids(agent)
                os.kill(spawner_pid, 9)  # as a user's `kill -9 -1` would
                # Its running child still ends, and is reported.
                os.killpg(int(_started_pid(agent)), 9)
                end = [m for flags, m in frames if flags == 0][-1]["event"]["end"]
            assert end["exited"] is False
            # The next command starts without it, and a new one starts for the next.
            after = server_stream(c, START, sh("id -u"))
            assert after.output("stdout") == f"{USER_UID}\n".encode()
            wait_ready(agent, 2)
            last = server_stream(c, START, sh("echo $PPID"))
            assert int(last.output("stdout")) == spawner_pids(agent)[-1]
    finally:
        stop(agent.process)
        print(agent.log())
    assert "spawner gone" in agent.log()


def _started_pid(agent: Agent) -> int:
    lines = [line for line in agent.log().splitlines() if "process started" in line]
    return int(lines[-1].split("pid=", 1)[1].split()[0])


def test_a_stopped_spawner_is_killed_and_replaced(
    tmp_path_factory: pytest.TempPathFactory, user_world: UserWorld
) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    agent = start_agent(tmp_path_factory.mktemp("stopped-spawner"), env={"CORRAL_AGENT_ETC": str(user_world.etc)})
    try:
        with httpx.Client(base_url=agent.url, timeout=30) as c:
            server_stream(c, START, sh("true"))
            wait_ready(agent, 1)
            (spawner_pid,) = spawner_pids(agent)
            os.kill(spawner_pid, signal.SIGSTOP)  # as a user's `kill -STOP -1` would
            stuck = server_stream(c, START, sh("echo never"))
            after = server_stream(c, START, sh("id -u"))
    finally:
        stop(agent.process)
        print(agent.log())
    assert stuck.error is not None and "did not answer" in stuck.error["message"]
    assert after.output("stdout") == f"{USER_UID}\n".encode()
