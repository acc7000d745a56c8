"""Commands started by the launcher thread: as any user, no fork of the agent, the agent itself unchanged."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import httpx

from tests.agent.conftest import EXTRA_GID, USER_UID, Agent, UserWorld
from tests.agent.helpers import live_stream, server_stream, sh, start_message, unary

START = "process.Process/Start"


def status_of(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def started_by(agent: Agent) -> list[str]:
    """``by=`` of every ``process started`` line in the agent's log, in order."""
    return [line.split(" by=", 1)[1].split()[0] for line in agent.log().splitlines() if "process started" in line]


def test_commands_as_the_user_are_the_agents_own_children(user_agent: Agent, user_world: UserWorld) -> None:
    script = 'id -u; id -g; id -G; echo "$HOME|$USER|$GREETING"; pwd; ls /proc/self/fd; echo $PPID'
    before = len(started_by(user_agent))
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        result = server_stream(c, START, sh(script, envs={"GREETING": "hi"}, cwd="/tmp"))
    lines = result.output("stdout").decode().splitlines()
    uid, gid, groups, env, cwd, *fds, ppid = lines
    assert (uid, gid) == (str(USER_UID), str(USER_UID))
    assert set(groups.split()) == {str(USER_UID), str(EXTRA_GID)}
    assert env == f"{user_world.home}|user|hi"
    assert cwd == "/tmp"
    assert sorted(int(fd) for line in fds for fd in line.split()) == [0, 1, 2, 3]  # 3: ls's own directory
    assert int(ppid) == user_agent.process.pid
    assert result.exit["exitCode"] == 0
    assert started_by(user_agent)[before:] == ["'launcher'"]  # a posix_spawn, not a fork of the agent


def test_the_command_has_the_users_ids_everywhere_and_no_capabilities(user_agent: Agent) -> None:
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        result = server_stream(c, START, start_message("/bin/cat", "/proc/self/status"))
    status = dict(line.split(":", 1) for line in result.output("stdout").decode().splitlines())
    assert status["Uid"].split() == [str(USER_UID)] * 4  # real, effective, saved, file system
    assert status["Gid"].split() == [str(USER_UID)] * 4
    assert set(status["Groups"].split()) == {str(USER_UID), str(EXTRA_GID)}
    for kind in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[kind], 16) == 0, kind


def test_the_agent_stays_root_in_its_own_directory(user_agent: Agent) -> None:
    agent_pid = user_agent.process.pid
    cwd = os.readlink(f"/proc/{agent_pid}/cwd")
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        for _ in range(3):
            server_stream(c, START, sh("true", cwd="/tmp"))
        as_root = server_stream(c, START, sh("id -u; id -G; pwd", cwd="/"), user="root")
    assert as_root.output("stdout").decode().split() == ["0", "0", "/"]
    threads = list(Path(f"/proc/{agent_pid}/task").iterdir())
    assert len(threads) >= 2  # the event loop and the launcher
    for thread in threads:
        assert status_of(thread / "status")["Uid"].split() == ["0"] * 4, thread
        assert os.readlink(thread / "cwd") in (cwd, "/"), thread  # the launcher's own is "/"
    assert os.readlink(f"/proc/{agent_pid}/cwd") == cwd


def test_users_started_at_once_each_get_their_own_ids(user_agent: Agent) -> None:
    outcomes: list[tuple[str, str]] = []

    def one(user: str) -> None:
        with httpx.Client(base_url=user_agent.url, timeout=30) as c:
            result = server_stream(c, START, sh("id -u"), user=user)
            outcomes.append((user, result.output("stdout").decode().strip()))

    threads = [threading.Thread(target=one, args=("user" if i % 2 else "root",)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 24
    assert all(uid == ("0" if user == "root" else str(USER_UID)) for user, uid in outcomes), outcomes


def test_exit_codes_signals_and_stdin(user_agent: Agent) -> None:
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
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


def test_signals_reach_the_process_group(user_agent: Agent) -> None:
    with (
        httpx.Client(base_url=user_agent.url, timeout=30) as c,
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


def test_a_large_environment(user_agent: Agent) -> None:
    big = "x" * (100 * 1024)
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        result = server_stream(c, START, sh("echo ${#BIG}; id -u", envs={"BIG": big}))
    assert result.output("stdout").decode().split() == [str(len(big)), str(USER_UID)]


def test_start_errors_are_those_of_the_user(user_agent: Agent, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "tool").write_text("#!/bin/sh\necho ran\n")
    (private / "tool").chmod(0o755)
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        missing = server_stream(c, START, start_message("no-such-program-here"))
        shut_out = server_stream(c, START, start_message("/bin/true", cwd=str(private)))
        not_theirs = server_stream(c, START, start_message(str(private / "tool")))
        root_may = server_stream(c, START, start_message(str(private / "tool"), cwd=str(private)), user="root")
    assert missing.error is not None and missing.error["code"] == "invalid_argument"
    assert "No such file or directory: 'no-such-program-here'" in missing.error["message"]
    assert shut_out.error is not None and f"Permission denied: '{private}'" in shut_out.error["message"]
    assert not_theirs.error is not None and "Permission denied" in not_theirs.error["message"]
    assert root_may.output("stdout") == b"ran\n"  # the launcher is root again after each
