"""The ``corral`` command line against the in-process fake server (through the SDK)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from corral.cli.main import app
from corral.sdk import _http
from tests.unit.sdk_fake import FakeCorral, FakeProcess, install

runner = CliRunner()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    return install(monkeypatch)


def corral(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, env=env)


# sandbox ...


def test_create_prints_the_id_and_sends_the_options(fake: FakeCorral) -> None:
    result = corral(
        "sandbox",
        "create",
        "--image",
        "py",
        "--vcpus",
        "2",
        "--memory-mb",
        "1024",
        "--timeout",
        "60",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--metadata",
        "owner=al",
    )
    assert result.exit_code == 0, result.output
    sid = result.stdout.strip()
    assert sid in fake.sandboxes
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.body == {
        "image": "py",
        "vcpus": 2,
        "memory_mb": 1024,
        "envs": {"A": "1", "B": "x=y"},
        "metadata": {"owner": "al"},
        "timeout": 60,
    }


def test_create_json(fake: FakeCorral) -> None:
    result = corral("sandbox", "create", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["id"] in fake.sandboxes and data["state"] == "running"
    assert data["created_at"] == "2026-11-23T20:00:00Z"


def test_bad_pair_is_a_usage_error(fake: FakeCorral) -> None:
    result = corral("sandbox", "create", "--env", "NOEQUALS")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.stderr


def test_list_table_and_json(fake: FakeCorral) -> None:
    red = fake.add_sandbox(metadata={"team": "red"})
    fake.add_sandbox(metadata={"team": "blue"}, state="dead")
    result = corral("sandbox", "list")
    assert result.exit_code == 0
    assert "ID" in result.stdout and red in result.stdout and "team=red" in result.stdout
    result = corral("sandbox", "list", "--state", "running", "--metadata", "team=red", "--json")
    assert [s["id"] for s in json.loads(result.stdout)["sandboxes"]] == [red]
    assert fake.last().params == [("state", "running"), ("metadata", "team=red")]


def test_info_kill_logs(fake: FakeCorral) -> None:
    sid = fake.add_sandbox(metadata={"a": "b"})
    result = corral("sandbox", "info", sid)
    assert result.exit_code == 0 and sid in result.stdout and "a=b" in result.stdout
    assert json.loads(corral("sandbox", "info", sid, "--json").stdout)["id"] == sid
    paused = fake.add_sandbox(state="paused", ends_at=None, remaining=299.538751)
    assert re.search(r"^remaining +299\.5 *$", corral("sandbox", "info", paused).stdout, re.M)

    result = corral("sandbox", "logs", sid, "--tail", "1")
    assert result.stdout == "runtime: ok\n"
    assert json.loads(corral("sandbox", "logs", sid, "--json").stdout)["logs"].startswith("agent")
    assert sid in fake.sandboxes  # looking does not kill

    result = corral("sandbox", "kill", sid)
    assert result.exit_code == 0 and result.stdout == f"killed {sid}\n"
    assert sid not in fake.sandboxes


def test_errors_are_one_line_and_exit_1(fake: FakeCorral) -> None:
    for args in (["sandbox", "info", "sbx-x"], ["sandbox", "kill", "sbx-x"], ["exec", "sbx-x", "true"]):
        result = corral(*args)
        assert result.exit_code == 1
        assert result.stderr == "error: sandbox_not_found: no sandbox 'sbx-x' exists\n"
        assert result.stdout == ""


def test_server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    monkeypatch.setattr(_http, "sync_transport", httpx.MockTransport(refuse))
    result = corral("--url", "http://127.0.0.1:9", "sandbox", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: server_unavailable: cannot reach the corral server at ")
    assert "http://127.0.0.1:9" in result.stderr and result.stderr.count("\n") == 1


def test_global_url_and_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakeCorral(api_key="sesame"))
    assert corral("sandbox", "list").stderr.startswith("error: unauthorized: ")
    assert corral("--api-key", "sesame", "sandbox", "list").exit_code == 0
    assert corral("sandbox", "list", env={"CORRAL_API_KEY": "sesame"}).exit_code == 0
    seen: list[str] = []

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return fake.handle(request)

    monkeypatch.setattr(_http, "sync_transport", httpx.MockTransport(spy))
    corral("--url", "http://other:1", "--api-key", "sesame", "sandbox", "list")
    assert seen == ["http://other:1/v1/sandboxes"]


def test_version() -> None:
    result = corral("--version")
    assert result.exit_code == 0 and result.stdout.startswith("corral ")


# exec


def test_exec_streams_raw_output_and_exits_with_the_code(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()

    def program(proc: FakeProcess) -> None:
        proc.emit("stdout", "out 1\n")
        proc.emit("stderr", "err 1\n")
        proc.emit("stdout", "out 2")
        proc.finish(3)

    fake.programs["build"] = program
    result = corral("exec", sid, "build")
    assert result.exit_code == 3
    assert result.stdout == "out 1\nout 2"
    assert result.stderr == "err 1\n"
    body = fake.last().body
    assert body["cmd"] == "build" and body["stream"] is True


def test_exec_argv_and_options(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    result = corral(
        "exec", sid, "--cwd", "/tmp", "--user", "root", "--env", "A=1", "--timeout", "5",
        "--", "python3", "-c", "print(1)",
    )  # fmt: skip
    assert result.exit_code == 0 and result.stdout == "1\n"
    assert fake.last().body == {
        "argv": ["python3", "-c", "print(1)"],
        "cwd": "/tmp",
        "envs": {"A": "1"},
        "user": "root",
        "timeout": 5,
        "background": False,
        "stream": True,
    }


def test_exec_stdin_flag(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    corral("exec", sid, "--stdin", "echo x", input="fed\n")
    started = next(r for r in reversed(fake.requests) if r.path.endswith("/exec"))
    assert started.body["stdin_open"] is True and started.body["stream"] is True  # then written as it comes
    assert "stdin" not in started.body
    corral("exec", sid, "echo x", input="ignored")
    assert "stdin" not in fake.last().body and "stdin_open" not in fake.last().body


def test_exec_json(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    result = corral("exec", sid, "--json", "exit 2")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"exit_code": 2, "stdout": "", "stderr": "boom\n"}
    assert fake.last().body["stream"] is False
    ok = corral("exec", sid, "--json", "echo hi")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["stdout"] == "hi\n"


def test_exec_timeout_exits_124(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    result = corral("exec", sid, "timeout")
    assert result.exit_code == 124
    assert result.stdout == "begun\n"
    assert result.stderr.startswith("error: exec_timeout: ")
    result = corral("exec", sid, "--json", "timeout")
    assert result.exit_code == 124
    assert json.loads(result.stdout)["error"] == "timeout"


def test_exec_signal_death_maps_to_128_plus_n(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    fake.programs["die"] = lambda proc: proc.finish(-9)
    assert corral("exec", sid, "die").exit_code == 137


# cp


def test_cp_upload_from_file_and_stdin(fake: FakeCorral, tmp_path: Path) -> None:
    sid = fake.add_sandbox()
    local = tmp_path / "data.bin"
    local.write_bytes(b"\x00\x01payload")
    result = corral("cp", str(local), f"{sid}:/home/user/")
    assert result.exit_code == 0, result.output
    assert fake.sandboxes[sid].files["/home/user/data.bin"] == b"\x00\x01payload"
    assert fake.last().headers.get("transfer-encoding") == "chunked"

    result = corral("cp", "-", f"{sid}:/tmp/in.txt", "--json", input="from stdin")
    assert result.exit_code == 0
    assert fake.sandboxes[sid].files["/tmp/in.txt"] == b"from stdin"
    assert json.loads(result.stdout)["path"] == "/tmp/in.txt"

    result = corral("cp", str(local), f"{sid}:renamed.bin", "--user", "root")
    assert fake.sandboxes[sid].files["/home/user/renamed.bin"] == b"\x00\x01payload"
    assert ("user", "root") in fake.last().params


def test_cp_download_to_file_dir_and_stdout(fake: FakeCorral, tmp_path: Path) -> None:
    sid = fake.add_sandbox()
    fake.sandboxes[sid].files["/var/log/app.log"] = b"line 1\nline 2\n"
    target = tmp_path / "copy.log"
    assert corral("cp", f"{sid}:/var/log/app.log", str(target)).exit_code == 0
    assert target.read_bytes() == b"line 1\nline 2\n"

    result = corral("cp", f"{sid}:/var/log/app.log", str(tmp_path), "--json")
    assert (tmp_path / "app.log").read_bytes() == b"line 1\nline 2\n"
    assert json.loads(result.stdout)["size"] == 14

    result = corral("cp", f"{sid}:/var/log/app.log", "-")
    assert result.stdout_bytes == b"line 1\nline 2\n"


def test_cp_errors(fake: FakeCorral, tmp_path: Path) -> None:
    sid = fake.add_sandbox()
    result = corral("cp", "a", "b")
    assert result.exit_code == 1 and result.stderr.startswith("error: invalid_request: exactly one side")
    result = corral("cp", f"{sid}:/a", f"{sid}:/b")
    assert result.exit_code == 1
    result = corral("cp", str(tmp_path / "missing"), f"{sid}:/x")
    assert result.exit_code == 1 and result.stderr.startswith("error: local_io: ")
    result = corral("cp", f"{sid}:/nope", str(tmp_path / "out"))
    assert result.stderr.startswith("error: file_not_found: ")
    assert not (tmp_path / "out").exists()  # no partial file left behind
    result = corral("cp", "-", f"{sid}:/tmp/", input="x")
    assert result.exit_code == 1 and "file name" in result.stderr
    assert corral("cp", "./local:odd", f"{sid}:/x").stderr.startswith("error: local_io: ")


def test_cp_of_a_directory_never_writes_outside_its_local_target(fake: FakeCorral, tmp_path: Path) -> None:
    """The names come from the sandbox: one that climbs out of the directory stops the copy."""
    sid = fake.add_sandbox()
    box = fake.sandboxes[sid]
    box.dirs.add("/out")
    box.files["/out/fine.txt"] = b"fine"
    box.files["/out/../escaped.txt"] = b"gotcha"  # as a lying agent could list it: one level up, tmp_path
    (tmp_path / "target").mkdir()
    result = corral("cp", f"{sid}:/out", str(tmp_path / "target"))
    assert result.exit_code == 1 and "not copied" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))


# serve


def test_serve_hands_its_options_to_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    module = types.ModuleType("corral.server.serve")
    module.run_server = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.server.serve", module)
    assert corral("serve").exit_code == 0
    assert corral("serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", str(tmp_path)).exit_code == 0
    assert calls == [
        {"host": None, "port": None, "data_dir": None},
        {"host": "0.0.0.0", "port": 8000, "data_dir": tmp_path},
    ]


QUIET_START = """
import sys
from corral.cli.main import app
try:
    app(["--url", "http://127.0.0.1:9", "exec", "sbnosuch", "--", "true"])  # nothing listens: an error, exit 1
except SystemExit as exc:
    assert exc.code == 1, exc.code
heavy = sorted(m for m in ("rich", "click", "pygments", "pydantic") if m in sys.modules)
assert not heavy, f"corral exec imported {heavy}"
"""


def test_corral_exec_imports_nothing_it_does_not_use() -> None:
    """``corral exec`` is run in loops: rich, httpx's own command line (click, pygments) and pydantic
    (which typer 0.29 imports to parse arguments) cost about 135 ms of each call together."""
    done = subprocess.run([sys.executable, "-c", QUIET_START], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "server_unavailable" in done.stderr
