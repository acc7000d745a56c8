"""The ``corral`` command line, run as a program, against a real server and sandboxes."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from corral import Sandbox

# The console script pip made; ``python -m corral.cli.main`` is not runnable (no __main__ guard).
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture
def cli_env(corral_url: str) -> dict[str, str]:
    # No PYTHONUNBUFFERED: the CLI must flush streamed output itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_") and k != "PYTHONUNBUFFERED"}
    return {**env, "CORRAL_URL": corral_url}


@pytest.fixture
def corral(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    def run(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([CORRAL, *args], input=input, capture_output=True, env=cli_env, timeout=timeout)

    return run


@pytest.fixture
def cli_sandbox(corral: Callable[..., subprocess.CompletedProcess[bytes]], corral_url: str) -> Iterator[str]:
    """A sandbox made by ``corral sandbox create``; killed afterwards whatever happens."""
    done = corral("sandbox", "create", "--json", "--metadata", "test=cli", "--env", "GREETING=hi there")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    try:
        yield info["id"]
    finally:
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(f"{corral_url}/v1/sandboxes/{info['id']}", timeout=60)


def test_create_list_info_logs_kill(corral, cli_sandbox: str) -> None:
    sid = cli_sandbox

    listed = corral("sandbox", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["ID", "IMAGE", "STATE"]
    row = next(line for line in lines if line.split()[:1] == [sid])
    assert row.split()[1:3] == ["corral/base", "running"]
    assert "test=cli" in row

    as_json = json.loads(corral("sandbox", "list", "--json", "--metadata", "test=cli").stdout)
    assert sid in {s["id"] for s in as_json["sandboxes"]}

    info = corral("sandbox", "info", sid, "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["id"] == sid and data["state"] == "running"
    assert data["metadata"] == {"test": "cli"} and data["envs"] == {"GREETING": "hi there"}
    text = corral("sandbox", "info", sid).stdout.decode()
    assert sid in text and "running" in text

    assert corral("exec", sid, "echo $GREETING").stdout == b"hi there\n"
    logs = corral("sandbox", "logs", sid)
    assert logs.returncode == 0, logs.stderr
    assert b"corral-agent: listening" in logs.stdout  # the agent's own console
    assert b"echo $GREETING" in logs.stdout

    killed = corral("sandbox", "kill", sid)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.decode().strip() == f"killed {sid}"
    gone = corral("sandbox", "info", sid)
    assert gone.returncode == 1
    assert gone.stderr.decode().startswith(f"error: sandbox_not_found: no sandbox '{sid}'")
    assert sid not in {s["id"] for s in json.loads(corral("sandbox", "list", "--json").stdout)["sandboxes"]}


def test_network_publish_and_preview_commands(corral, corral_url: str) -> None:
    from tests.serverproc import free_port

    host_port = free_port()
    done = corral("sandbox", "create", "--json", "--publish", f"{host_port}:8000",
                  "--network-mode", "allowlist", "--allow-domain", "pypi.org", "--allow-host", "5432")  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    try:
        assert info["network"]["mode"] == "allowlist" and info["network"]["allow_domains"] == ["pypi.org"]
        assert info["network"]["allow_host"] == [5432]
        assert info["ports"] == [{"host_port": host_port, "port": 8000, "auto": False}]
        changed = corral("sandbox", "network", info["id"], "--network-mode", "none", "--json")
        assert changed.returncode == 0, changed.stderr
        assert json.loads(changed.stdout)["network"]["mode"] == "none"
        bad = corral("sandbox", "network", info["id"], "--allow-cidr", "10.0.0.0/33")
        assert bad.returncode != 0 and b"10.0.0.0/33" in bad.stderr
        extra = free_port()
        published = corral("sandbox", "publish", info["id"], f"{extra}:9000")
        assert published.returncode == 0 and f"127.0.0.1:{extra}".encode() in published.stdout
        assert corral("sandbox", "unpublish", info["id"], str(extra)).returncode == 0
        link = corral("sandbox", "preview", info["id"], "3000")
        assert link.returncode == 0
        assert link.stdout.decode().startswith(f"http://3000-{info['id']}.localhost:")
        assert f"corral_preview_token={info['preview_token']}".encode() in link.stdout
    finally:
        httpx.delete(f"{corral_url}/v1/sandboxes/{info['id']}", timeout=60)


def test_unknown_sandbox_is_one_error_line(corral) -> None:
    for args in (
        ("sandbox", "info", "sbnope"),
        ("sandbox", "kill", "sbnope"),
        ("sandbox", "logs", "sbnope"),
        ("exec", "sbnope", "--", "true"),
        ("cp", "sbnope:/etc/hostname", "-"),
    ):
        done = corral(*args)
        assert done.returncode == 1, args
        assert done.stdout == b"", args
        err = done.stderr.decode()
        assert err.startswith("error: sandbox_not_found: ") and "sbnope" in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err


def test_exec_exit_code_and_streams(corral, sandbox: Sandbox) -> None:
    done = corral("exec", sandbox.id, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"
    # One argument is a shell line; a signal death is 128 + the signal, as shells report it.
    assert corral("exec", sandbox.id, "kill -9 $$").returncode == 137


def test_exec_json(corral, sandbox: Sandbox) -> None:
    done = corral("exec", "--json", sandbox.id, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert json.loads(done.stdout) == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}
    assert done.stderr == b""


def test_exec_stdin(corral, sandbox: Sandbox) -> None:
    done = corral("exec", "--stdin", sandbox.id, "tr a-z A-Z", input=b"shout\n")
    assert (done.returncode, done.stdout) == (0, b"SHOUT\n")
    # Any bytes, past the server's JSON limit (1 MiB): it was read whole, sent as text, and refused.
    payload = os.urandom(3 << 20)
    done = corral("exec", "--stdin", sandbox.id, "sha256sum", input=payload)
    assert (done.returncode, done.stdout.split()[0].decode()) == (0, hashlib.sha256(payload).hexdigest()), done


@contextlib.contextmanager
def cli_running(cli_env: dict[str, str], *args: str, stdin: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """``corral ARGS`` as a process with piped stdout and stderr (and stdin); killed if still running after."""
    proc = subprocess.Popen(
        [CORRAL, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
    )
    with proc:  # closes its pipes on the way out
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_exec_stdin_reaches_the_command_as_it_comes(cli_env: dict[str, str], sandbox: Sandbox) -> None:
    with cli_running(cli_env, "exec", "--stdin", sandbox.id, "--", "cat", stdin=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        # Before its stdin ends: it was read whole first, so nothing came back until then.
        assert select.select([proc.stdout], [], [], 30)[0], "the first line did not come back within 30 s"
        assert proc.stdout.readline() == b"first\n"
        proc.stdin.write(b"second\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"second\n"
        assert proc.wait(30) == 0


def test_exec_streams_output_as_it_arrives(cli_env: dict[str, str], sandbox: Sandbox) -> None:
    line = "for i in 1 2 3; do echo $i; sleep 0.3; done"
    arrivals: list[tuple[float, bytes]] = []
    with cli_running(cli_env, "exec", sandbox.id, "--", "sh", "-c", line) as proc:
        assert proc.stdout is not None
        for printed in iter(proc.stdout.readline, b""):
            arrivals.append((time.monotonic(), printed))
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else b""
    assert [printed for _, printed in arrivals] == [b"1\n", b"2\n", b"3\n"]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert all(gap > 0.15 for gap in gaps), gaps  # each line came when printed, not all at the end


def test_cp_in_and_out(corral, sandbox: Sandbox, tmp_path: Path) -> None:
    payload = os.urandom(3 << 20) + b"tail"
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()

    up = corral("cp", str(source), f"{sandbox.id}:/home/user/in/")
    assert up.returncode == 0, up.stderr
    remote = sandbox.commands.run("sha256sum /home/user/in/blob.bin; stat -c %U /home/user/in/blob.bin").stdout
    assert remote.split()[0] == digest and remote.split()[-1] == "user"

    target = tmp_path / "back.bin"
    down = corral("cp", f"{sandbox.id}:/home/user/in/blob.bin", str(target))
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest

    entry = corral("cp", "--json", str(source), f"{sandbox.id}:/home/user/again.bin")
    assert json.loads(entry.stdout)["size"] == len(payload)

    missing = corral("cp", f"{sandbox.id}:/home/user/nope.bin", str(tmp_path / "nope.bin"))
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: file_not_found: ")
    assert not (tmp_path / "nope.bin").exists()


def test_cp_stdin_and_stdout(corral, sandbox: Sandbox) -> None:
    payload = os.urandom(2 << 20)
    up = corral("cp", "-", f"{sandbox.id}:/tmp/from-stdin.bin", input=payload)
    assert up.returncode == 0, up.stderr
    assert sandbox.commands.run("wc -c < /tmp/from-stdin.bin").stdout.strip() == str(len(payload))
    down = corral("cp", f"{sandbox.id}:/tmp/from-stdin.bin", "-")
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(down.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_cp_of_a_directory_both_ways(corral, sandbox: Sandbox, tmp_path: Path) -> None:
    tree = tmp_path / "project"
    (tree / "src" / "deep").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "README").write_text("hello\n")
    (tree / "src" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "src" / "run.sh").chmod(0o755)
    (tree / "src" / "deep" / "data.bin").write_bytes(os.urandom(100_000))
    (tree / "link").symlink_to("/etc/passwd")  # left out: it points out of the tree

    up = corral("cp", "--json", str(tree), f"{sandbox.id}:/home/user/")
    assert up.returncode == 0, up.stderr
    assert sorted(e["path"] for e in json.loads(up.stdout)) == [
        "/home/user/project/README", "/home/user/project/src/deep/data.bin", "/home/user/project/src/run.sh"
    ]  # fmt: skip
    assert sandbox.commands.run("/home/user/project/src/run.sh").stdout == "ran\n"  # its mode came along
    listing = sandbox.commands.run("cd /home/user/project && find . | sort").stdout.split()
    assert listing == [".", "./README", "./empty", "./src", "./src/deep", "./src/deep/data.bin", "./src/run.sh"]

    back = tmp_path / "back"
    back.mkdir()
    down = corral("cp", f"{sandbox.id}:/home/user/project", str(back))  # into an existing directory
    assert down.returncode == 0, down.stderr
    copy = back / "project"
    assert (copy / "README").read_text() == "hello\n" and (copy / "empty").is_dir()
    assert (copy / "src" / "deep" / "data.bin").read_bytes() == (tree / "src" / "deep" / "data.bin").read_bytes()
    assert os.stat(copy / "src" / "run.sh").st_mode & 0o777 == 0o755
    assert not (copy / "link").exists()


def test_cp_needs_exactly_one_sandbox_side(corral, tmp_path: Path) -> None:
    done = corral("cp", str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 1
    assert done.stderr.decode().startswith("error: invalid_request: exactly one side")


def test_snapshot_restore_fork_hibernate_and_timeout_commands(corral, sandbox: Sandbox, corral_url: str) -> None:
    sandbox.files.write("/home/user/state.txt", "before the snapshot")
    sandbox.commands.run("sleep 1000", background=True)
    made: list[str] = []
    try:
        taken = corral("snapshot", "create", sandbox.id, "--metadata", "step=one")
        assert taken.returncode == 0, taken.stderr
        snapshot_id = taken.stdout.decode().strip()
        listed = json.loads(corral("snapshot", "list", "--sandbox", sandbox.id, "--json").stdout)["snapshots"]
        assert [(s["id"], s["state"], s["metadata"]) for s in listed] == [(snapshot_id, "ready", {"step": "one"})]
        text = corral("snapshot", "info", snapshot_id).stdout.decode()
        assert snapshot_id in text and "ready" in text and sandbox.id in text

        restored = corral("sandbox", "create", "--snapshot", snapshot_id, "--on-timeout", "pause",
                          "--auto-pause", "60", "--json")  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        info = json.loads(restored.stdout)
        made.append(info["id"])
        assert (info["on_timeout"], info["auto_pause"]) == ("pause", 60)
        # The same files, and the same processes: the background sleep came along.
        check = "cat /home/user/state.txt; pgrep -x sleep >/dev/null && echo running"
        assert corral("exec", info["id"], check).stdout == b"before the snapshotrunning\n"

        forked = corral("sandbox", "fork", sandbox.id, "-n", "2", "--metadata", "branch=b", "--json")
        assert forked.returncode == 0, forked.stderr
        copies = json.loads(forked.stdout)["sandboxes"]
        made.extend(c["id"] for c in copies)
        assert len({c["id"] for c in copies}) == 2 and sandbox.id not in {c["id"] for c in copies}
        assert all(c["metadata"]["branch"] == "b" and c["metadata"]["corral.forked_from"] == sandbox.id for c in copies)
        assert corral("exec", copies[1]["id"], "cat /home/user/state.txt").stdout == b"before the snapshot"

        never = corral("sandbox", "timeout", info["id"], "0")
        assert never.stdout.decode().strip() == f"{info['id']}: no timeout"
        later = json.loads(corral("sandbox", "timeout", info["id"], "600", "--json").stdout)
        assert later["ends_at"] is not None and later["timeout"] > 0
        assert corral("sandbox", "timeout", info["id"], "600").stdout.decode().startswith(f"{info['id']}: 20")
        corral("sandbox", "pause", info["id"])
        row = next(line for line in corral("sandbox", "list").stdout.decode().splitlines() if info["id"] in line)
        assert "paused" in row and "s after resume" in row  # its clock stopped: what is left, not a time
        assert corral("sandbox", "resume", info["id"]).stdout.decode().strip() == f"{info['id']} is running"

        slept = corral("sandbox", "hibernate", info["id"])
        assert slept.stdout.decode().strip() == f"{info['id']} is hibernated", slept.stderr
        assert corral("exec", info["id"], "cat /home/user/state.txt").stdout == b"before the snapshot"  # woken

        deleted = corral("snapshot", "rm", snapshot_id)
        assert deleted.stdout.decode().strip() == f"deleted {snapshot_id}"
        gone = corral("snapshot", "info", snapshot_id)
        assert gone.returncode == 1 and gone.stderr.decode().startswith("error: snapshot_not_found: ")
    finally:
        for sid in made:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{corral_url}/v1/sandboxes/{sid}", timeout=60)


@pytest.mark.xdist_group("pools")
def test_pool_commands(corral) -> None:
    key = "image:corral/base"
    try:
        done = corral("pool", "set", key, "1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().startswith(f"{key}: size 1")
        deadline = time.monotonic() + 60
        while True:
            pools = {p["key"]: p for p in json.loads(corral("pool", "list", "--json").stdout)["pools"]}
            if pools[key]["ready"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (pools[key]["size"], pools[key]["ready"]) == (1, 1)
        table = corral("pool", "list").stdout.decode().splitlines()
        assert table[0].split() == ["KEY", "SIZE", "READY", "HITS", "MISSES"]
        assert any(line.split()[:3] == [key, "1", "1"] for line in table[1:])
        bad = corral("pool", "set", "nonsense", "1")
        assert bad.returncode == 1 and bad.stderr.decode().startswith("error: invalid_request: ")
    finally:
        deleted = corral("pool", "rm", key)
    assert deleted.stdout.decode().strip() == f"deleted {key}", deleted.stderr
    assert key not in {p["key"] for p in json.loads(corral("pool", "list", "--json").stdout)["pools"]}
    again = corral("pool", "rm", key)
    assert again.returncode == 1 and again.stderr.decode().startswith("error: not_found: ")
