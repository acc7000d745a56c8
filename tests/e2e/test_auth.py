"""API keys against a real server: every route but /health needs ``X-API-Key``.

Also: ``corral serve`` refuses to listen beyond loopback without a key, and
does so before it listens at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import Sandbox
from corral.errors import AuthenticationError
from tests.serverproc import ServerProcess, free_port, worker_index

CORRAL = str(Path(sys.executable).with_name("corral"))

KEY = "ck_" + secrets.token_urlsafe(24)

PROTECTED = [
    ("GET", "/v1/sandboxes"),
    ("POST", "/v1/sandboxes"),
    ("GET", "/v1/sandboxes/sbnope"),
    ("DELETE", "/v1/sandboxes/sbnope"),
    ("POST", "/v1/sandboxes/sbnope/exec"),
    ("GET", "/v1/sandboxes/sbnope/files?path=/etc/hostname"),
    ("GET", "/v1/no-such-route"),  # 401, not 404: nothing is told without the key
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}


@contextlib.contextmanager
def keyed_server(tmp_path: Path, env: dict[str, str], *, subnet_index: int) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", subnet_index=subnet_index, env=env)
    for name in ("CORRAL_API_KEY", "CORRAL_API_KEY_SHA256"):  # only the key this test gives
        if name not in env:
            proc.env.pop(name, None)
    with proc.running(api_key=env.get("CORRAL_API_KEY") or KEY):  # which also removes its firewall table
        yield proc


def _assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "unauthorized"
    assert "X-API-Key" in body["error"]["message"]


def _check_server(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    monkeypatch.delenv("CORRAL_URL", raising=False)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # open without a key
    for method, path in PROTECTED:
        body = {"cmd": "true"} if path.endswith("exec") else {} if method == "POST" else None
        _assert_unauthorized(httpx.request(method, url + path, json=body))
        _assert_unauthorized(httpx.request(method, url + path, json=body, headers={"X-API-Key": KEY + "x"}))
        _assert_unauthorized(httpx.request(method, url + path, json=body, headers={"X-API-Key": ""}))
    # The key is a header, nothing else.
    _assert_unauthorized(httpx.get(f"{url}/v1/sandboxes", params={"api_key": KEY}))
    _assert_unauthorized(httpx.get(f"{url}/v1/sandboxes", headers={"Authorization": f"Bearer {KEY}"}))

    # The right key opens every door.
    assert httpx.get(f"{url}/openapi.json", headers={"X-API-Key": KEY}).status_code == 200
    with pytest.raises(AuthenticationError):
        Sandbox.list(url=url)
    with pytest.raises(AuthenticationError):
        Sandbox.create(url=url, api_key="wrong")
    with Sandbox.create(url=url, api_key=KEY, metadata={"test": "auth"}) as sbx:
        assert sbx.commands.run("echo keyed").stdout == "keyed\n"
        assert [s.id for s in Sandbox.list(url=url, api_key=KEY)] == [sbx.id]
        r = httpx.post(f"{url}/v1/sandboxes/{sbx.id}/exec", json={"cmd": "touch /tmp/x"})
        _assert_unauthorized(r)
        assert not sbx.files.exists("/tmp/x")  # refused before anything ran
        _assert_unauthorized(httpx.delete(f"{url}/v1/sandboxes/{sbx.id}"))
        assert sbx.info().state == "running"
    assert Sandbox.list(url=url, api_key=KEY) == []


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with keyed_server(
        tmp_path_factory.mktemp("auth"), {"CORRAL_API_KEY": KEY}, subnet_index=30 + worker_index()
    ) as server:
        yield server


def test_api_key(keyed: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_server(keyed.url, monkeypatch)
    assert KEY not in keyed.log()


def test_api_key_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest().upper()  # either case of hex is accepted
    # Its own address range: the module's server may still be tearing a sandbox down on its own.
    with keyed_server(tmp_path, {"CORRAL_API_KEY_SHA256": digest}, subnet_index=35 + worker_index()) as server:
        _check_server(server.url, monkeypatch)
        # The digest itself is not a key.
        _assert_unauthorized(httpx.get(f"{server.url}/v1/sandboxes", headers={"X-API-Key": digest.lower()}))


def test_cli_sends_the_key(keyed: ServerProcess) -> None:
    env = {**_clean_env(), "CORRAL_URL": keyed.url}
    refused = subprocess.run([CORRAL, "sandbox", "list"], capture_output=True, env=env, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.decode().startswith("error: unauthorized: ")
    by_option = subprocess.run(
        [CORRAL, "--api-key", KEY, "sandbox", "list", "--json"], capture_output=True, env=env, timeout=60
    )
    assert by_option.returncode == 0, by_option.stderr
    by_env = subprocess.run(
        [CORRAL, "sandbox", "list", "--json"], capture_output=True, env={**env, "CORRAL_API_KEY": KEY}, timeout=60
    )
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_option.stdout


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        ([], {"CORRAL_HOST": "0.0.0.0"}),
        (["--host", "0.0.0.0"], {"CORRAL_API_KEY": ""}),  # an empty key is no key
    ],
    ids=["option", "ipv6-any", "environment", "empty-key"],
)
def test_serve_refuses_a_public_bind_without_a_key(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [CORRAL, "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**_clean_env(), **env},
    )
    try:
        listened = False
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not listened:
            listened = _listening(port)
            time.sleep(0.02)
        listened = listened or _listening(port)
        assert not listened, "corral serve listened"
        assert proc.poll() is not None, "corral serve kept running"
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    message = err.decode()
    assert message.startswith("error: invalid_request: refusing to listen on "), message
    assert "without an API key" in message and "CORRAL_API_KEY" in message
    assert message.count("\n") == 1 and "Traceback" not in message
    assert out == b""
    assert not data_dir.exists()  # refused before touching any state
