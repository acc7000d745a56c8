"""process.Process over raw Connect framing: start, stream, input, signals, PTY, reattach."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import httpx

from tests.agent.conftest import EXTRA_GID, USER_UID, Agent, UserWorld, start_agent, stop
from tests.agent.helpers import (
    envelope,
    live_stream,
    server_stream,
    sh,
    start_message,
    unary,
)

START = "process.Process/Start"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_start_streams_start_output_and_end(client: httpx.Client) -> None:
    result = server_stream(client, START, sh("echo out; echo err >&2; exit 3"))
    assert result.error is None
    assert "start" in result.events[0] and result.events[0]["start"]["pid"] > 0
    assert result.output("stdout") == b"out\n"
    assert result.output("stderr") == b"err\n"
    assert result.exit == {
        "exitCode": 3,
        "exited": True,
        "status": "exit status 3",
        "error": "exit status 3",
    }


def test_success_has_no_error_field(client: httpx.Client) -> None:
    result = server_stream(client, START, start_message("/bin/true"))
    assert result.exit == {"exitCode": 0, "exited": True, "status": "exit status 0"}


def test_args_envs_and_cwd(client: httpx.Client, tmp_path: Path) -> None:
    message = start_message(
        "/bin/sh",
        "-c",
        'printf "%s|%s|%s" "$1" "$GREETING" "$(pwd)"',
        "arg0",
        "one two",
        envs={"GREETING": "hello"},
        cwd=str(tmp_path),
    )
    result = server_stream(client, START, message)
    assert result.output("stdout").decode() == f"one two|hello|{tmp_path}"


def test_default_environment(client: httpx.Client) -> None:
    result = server_stream(client, START, sh('echo "$HOME|$USER|$LOGNAME|$SHELL|$LANG"; echo "$PATH"'))
    first, path = result.output("stdout").decode().splitlines()
    home, user, logname, shell, lang = first.split("|")
    assert (user, logname) == ("root", "root")
    assert home and shell and lang
    assert "/bin" in path.split(":")
    assert "PYTHONHOME" not in result.output("stdout").decode()


def test_agent_settings_are_not_inherited(tmp_path: Path, agent: Agent, client: httpx.Client) -> None:
    result = server_stream(client, START, sh("env"))
    assert "CORRAL_AGENT_" not in result.output("stdout").decode()


def test_missing_cwd_is_invalid_argument(client: httpx.Client, tmp_path: Path) -> None:
    result = server_stream(client, START, start_message("/bin/true", cwd=str(tmp_path / "nope")))
    assert result.error is not None and result.error["code"] == "invalid_argument"
    assert "does not exist" in result.error["message"]
    assert result.events == []


def test_unknown_command_is_invalid_argument(client: httpx.Client) -> None:
    result = server_stream(client, START, start_message("/no/such/binary"))
    assert result.error is not None and result.error["code"] == "invalid_argument"


def test_command_found_on_path(client: httpx.Client) -> None:
    result = server_stream(client, START, start_message("echo", "via", "PATH"))
    assert result.output("stdout") == b"via PATH\n"


def test_large_output_arrives_whole(client: httpx.Client) -> None:
    result = server_stream(client, START, sh("head -c 3000000 /dev/zero | tr '\\0' x"))
    assert result.output("stdout") == b"x" * 3_000_000


def test_output_arrives_as_it_is_written(client: httpx.Client, tmp_path: Path) -> None:
    # The process goes on only once the test has seen its first line: were output
    # held until the process ends, it would come after a minute, past the client's 30 s timeout.
    go_on = tmp_path / "go-on"
    line = f"echo first; for i in $(seq 1200); do [ -e {go_on} ] && break; sleep 0.05; done; echo second"
    with live_stream(client, START, sh(line)) as frames:
        _, start = next(frames)
        assert "start" in start["event"]
        _, first = next(frames)
        assert base64.b64decode(first["event"]["data"]["stdout"]) == b"first\n"
        go_on.touch()
        rest = list(frames)
    assert rest[-1][0] == 2 and rest[-1][1] == {}


def test_background_grandchild_does_not_hold_the_stream(client: httpx.Client) -> None:
    began = time.monotonic()
    result = server_stream(client, START, sh("sleep 15 & echo started"))
    assert time.monotonic() - began < 10  # not held until the grandchild ends
    assert result.output("stdout") == b"started\n"
    assert result.exit["exitCode"] == 0


def test_stdin_false_gives_an_empty_stdin(client: httpx.Client) -> None:
    result = server_stream(client, START, {**sh("cat; echo done"), "stdin": False})
    assert result.output("stdout") == b"done\n"


def test_send_input_and_close_stdin(client: httpx.Client) -> None:
    with live_stream(client, START, {**start_message("/bin/cat"), "stdin": True}) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        selector = {"process": {"pid": pid}}
        r = unary(client, "process.Process/SendInput", {**selector, "input": {"stdin": b64(b"hello\n")}})
        assert r.status_code == 200 and r.json() == {}
        _, echoed = next(frames)
        assert base64.b64decode(echoed["event"]["data"]["stdout"]) == b"hello\n"
        assert unary(client, "process.Process/CloseStdin", selector).status_code == 200
        rest = [m for flags, m in frames if flags == 0]
    assert rest[-1]["event"]["end"]["exitCode"] == 0


def test_stream_input(client: httpx.Client) -> None:
    with live_stream(client, START, {**start_message("/bin/cat"), "stdin": True}) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        body = (
            envelope({"start": {"process": {"pid": pid}}})
            + envelope({"data": {"input": {"stdin": b64(b"a")}}})
            + envelope({"keepalive": {}})
            + envelope({"data": {"input": {"stdin": b64(b"b\n")}}})
        )
        r = client.post(
            "/process.Process/StreamInput",
            content=body,
            headers={"Content-Type": "application/connect+json"},
        )
        assert r.status_code == 200
        assert r.content.endswith(envelope({}, flags=2))
        assert unary(client, "process.Process/CloseStdin", {"process": {"pid": pid}}).status_code == 200
        data = b"".join(
            base64.b64decode(m["event"]["data"]["stdout"]) for flags, m in frames if flags == 0 and "data" in m["event"]
        )
    assert data == b"ab\n"


def test_list_shows_running_processes_with_their_config(client: httpx.Client) -> None:
    message = {**start_message("/bin/sleep", "30", envs={"A": "1"}), "tag": "sleeper"}
    with live_stream(client, START, message) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        listed = unary(client, "process.Process/List", {}).json()["processes"]
        mine = [p for p in listed if p["pid"] == pid]
        assert mine == [
            {
                "config": {"cmd": "/bin/sleep", "args": ["30"], "envs": {"A": "1"}},
                "pid": pid,
                "tag": "sleeper",
            }
        ]
        kill = {"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGKILL"}
        assert unary(client, "process.Process/SendSignal", kill).status_code == 200
        end = [m for flags, m in frames if flags == 0][-1]["event"]["end"]
    assert end == {"exitCode": -1, "exited": False, "status": "signal: killed", "error": "signal: killed"}
    listed = unary(client, "process.Process/List", {}).json()["processes"]
    assert pid not in [p["pid"] for p in listed]


def test_signals_by_name(client: httpx.Client) -> None:
    for name, status in (("SIGNAL_SIGTERM", "terminated"), ("SIGINT", "interrupt"), (15, "terminated")):
        with live_stream(client, START, start_message("/bin/sleep", "30")) as frames:
            _, start = next(frames)
            pid = start["event"]["start"]["pid"]
            r = unary(client, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": name})
            assert r.status_code == 200, r.text
            end = [m for flags, m in frames if flags == 0][-1]["event"]["end"]
        assert end["status"] == f"signal: {status}"


def test_signal_reaches_the_whole_process_group(client: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    script = f"(sleep 1; touch {marker}) & wait"
    with live_stream(client, START, sh(script)) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        unary(client, "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        list(frames)
    time.sleep(1.3)
    assert not marker.exists()


def test_unknown_process_is_not_found(client: httpx.Client) -> None:
    for method, extra in (
        ("SendSignal", {"signal": "SIGNAL_SIGKILL"}),
        ("SendInput", {"input": {"stdin": ""}}),
        ("CloseStdin", {}),
    ):
        r = unary(client, f"process.Process/{method}", {"process": {"pid": 999999}, **extra})
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"
    result = server_stream(client, "process.Process/Connect", {"process": {"tag": "nobody-has-it"}})
    assert result.error is not None and result.error["code"] == "not_found"


def test_invalid_signal(client: httpx.Client) -> None:
    with live_stream(client, START, start_message("/bin/sleep", "30")) as frames:
        _, start = next(frames)
        selector = {"process": {"pid": start["event"]["start"]["pid"]}}
        r = unary(client, "process.Process/SendSignal", {**selector, "signal": "SIGNAL_BOGUS"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        unary(client, "process.Process/SendSignal", {**selector, "signal": "SIGNAL_SIGKILL"})
        list(frames)


def test_connect_reattaches_by_pid_and_tag(client: httpx.Client, agent: Agent) -> None:
    script = "read line; echo got $line; read line; echo got $line"
    with live_stream(client, START, {**sh(script), "stdin": True, "tag": "reader"}) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        reattach = {"process": {"tag": "reader"}}
        with (
            httpx.Client(base_url=agent.url, timeout=30) as other,
            live_stream(other, "process.Process/Connect", reattach) as attached,
        ):
            _, first = next(attached)
            assert first["event"]["start"]["pid"] == pid
            selector = {"process": {"pid": pid}}
            unary(client, "process.Process/SendInput", {**selector, "input": {"stdin": b64(b"1\n")}})
            _, data = next(attached)
            assert base64.b64decode(data["event"]["data"]["stdout"]) == b"got 1\n"
            unary(client, "process.Process/SendInput", {**selector, "input": {"stdin": b64(b"2\n")}})
            attached_rest = [m for flags, m in attached if flags == 0]
        original = [m for flags, m in frames if flags == 0]
    assert attached_rest[-1]["event"]["end"]["exitCode"] == 0
    assert b"got 2\n" in b"".join(
        base64.b64decode(m["event"]["data"]["stdout"]) for m in attached_rest if "data" in m["event"]
    )
    assert original[-1]["event"]["end"]["exitCode"] == 0


def test_process_outlives_a_disconnected_stream(client: httpx.Client, agent: Agent, tmp_path: Path) -> None:
    marker = tmp_path / "done"
    with live_stream(client, START, {**sh(f"sleep 0.5; touch {marker}"), "tag": "detached"}) as frames:
        next(frames)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def test_deadline_kills_the_process(client: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "late"
    began = time.monotonic()
    result = server_stream(client, START, sh(f"sleep 3; touch {marker}"), headers={"Connect-Timeout-Ms": "300"})
    assert 0.25 < time.monotonic() - began < 2.5  # well before the process would have ended
    assert result.error is not None and result.error["code"] == "deadline_exceeded"
    time.sleep(max(0.0, began + 3.5 - time.monotonic()))
    assert not marker.exists()


def test_keepalive_events_on_an_idle_stream(client: httpx.Client) -> None:
    result = server_stream(client, START, sh("sleep 1.3"), headers={"Keepalive-Ping-Interval": "1"})
    assert {"keepalive": {}} in result.events
    assert result.exit["exitCode"] == 0


def test_pty(client: httpx.Client) -> None:
    message = {
        **start_message("/bin/sh", envs={"PS1": "$ "}),
        "pty": {"size": {"cols": 100, "rows": 30}},
    }
    with live_stream(client, START, message) as frames:
        _, start = next(frames)
        pid = start["event"]["start"]["pid"]
        selector = {"process": {"pid": pid}}
        r = unary(client, "process.Process/Update", {**selector, "pty": {"size": {"cols": 123, "rows": 45}}})
        assert r.status_code == 200
        script = b"stty size; tty; test -t 0 && echo is-a-tty; exit 7\n"
        unary(client, "process.Process/SendInput", {**selector, "input": {"pty": b64(script)}})
        messages = [m for flags, m in frames if flags == 0]
    output = b"".join(base64.b64decode(m["event"]["data"]["pty"]) for m in messages if "data" in m["event"])
    assert b"45 123" in output
    assert b"/dev/pts/" in output
    assert b"is-a-tty" in output
    assert messages[-1]["event"]["end"]["exitCode"] == 7


def test_pty_has_job_control(client: httpx.Client) -> None:
    # Ctrl-C in the terminal interrupts the foreground job, not the shell.
    message = {**start_message("/bin/sh", envs={"PS1": "$ "}), "pty": {"size": {"cols": 80, "rows": 24}}}
    with live_stream(client, START, message) as frames:
        _, start = next(frames)
        selector = {"process": {"pid": start["event"]["start"]["pid"]}}

        def send(data: bytes) -> None:
            unary(client, "process.Process/SendInput", {**selector, "input": {"pty": b64(data)}})

        send(b"sleep 30\n")
        time.sleep(0.3)
        send(b"\x03")
        time.sleep(0.2)
        send(b"echo alive-$((40+2))\n")
        time.sleep(0.2)
        r = unary(client, "process.Process/CloseStdin", selector)  # Ctrl-D for a PTY
        assert r.status_code == 200
        messages = [m for flags, m in frames if flags == 0]
    output = b"".join(base64.b64decode(m["event"]["data"]["pty"]) for m in messages if "data" in m["event"])
    assert b"alive-42" in output
    assert messages[-1]["event"]["end"]["exited"] is True


def test_children_are_reaped(client: httpx.Client, agent: Agent) -> None:
    for _ in range(5):
        server_stream(client, START, start_message("/bin/true"))
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[1]) == agent.process.pid:
                children.append((entry, fields[0]))
    assert [c for c in children if c[1] == "Z"] == []


def test_runs_as_the_calling_user(user_agent: Agent, user_world: UserWorld) -> None:
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        default = server_stream(c, START, sh('id -u; id -g; id -G; echo "$HOME|$USER"; pwd'))
        as_root = server_stream(c, START, sh("id -u"), user="root")
        unknown = server_stream(c, START, sh("id -u"), user="ghost")
    uid, gid, groups, env, cwd = default.output("stdout").decode().splitlines()
    assert (uid, gid) == (str(USER_UID), str(USER_UID))
    assert set(groups.split()) == {str(USER_UID), str(EXTRA_GID)}
    assert env == f"{user_world.home}|user"
    assert cwd == str(user_world.home)
    assert as_root.output("stdout") == b"0\n"
    assert unknown.error is not None and unknown.error["code"] == "unauthenticated"


def test_relative_and_tilde_cwd(user_agent: Agent, user_world: UserWorld) -> None:
    (user_world.home / "sub").mkdir(exist_ok=True)
    with httpx.Client(base_url=user_agent.url, timeout=30) as c:
        tilde = server_stream(c, START, start_message("/bin/pwd", cwd="~/sub"))
        relative = server_stream(c, START, start_message("/bin/pwd", cwd="sub"))
    assert tilde.output("stdout").decode().strip() == str(user_world.home / "sub")
    assert relative.output("stdout").decode().strip() == str(user_world.home / "sub")


def test_sigterm_is_forwarded_to_children(tmp_path: Path) -> None:
    running = start_agent(tmp_path)
    marker = tmp_path / "got-term"
    script = f'trap "echo term > {marker}; exit 0" TERM; echo ready; while true; do sleep 0.05; done'
    try:
        with (
            httpx.Client(base_url=running.url, timeout=30) as c,
            live_stream(c, START, sh(script)) as frames,
        ):
            next(frames)  # start
            next(frames)  # ready: the trap is set
            running.process.send_signal(signal.SIGTERM)
            assert running.process.wait(10) == 0
    finally:
        stop(running.process)
    assert marker.read_text() == "term\n"
    assert "shutting down" in running.log()
