"""Preview URLs and published ports, against a real app in a real sandbox."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from corral import CommandHandle, InvalidRequest, PortInUse, Sandbox
from corral.runtimes.base import AGENT_PORT
from tests.serverproc import ServerProcess, free_port, worker_index

pytestmark = pytest.mark.runsc

APP = (Path(__file__).parent / "apps" / "preview_app.py").read_text()
TOKEN = "X-Corral-Preview-Token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("previews"), subnet_index=48 + worker_index()).running() as proc:
        yield proc


@pytest.fixture(scope="module")
def app(server: ServerProcess) -> Iterator[Sandbox]:
    """One sandbox running the test app on port 8000."""
    sbx = Sandbox.create(url=server.url)
    start_app(sbx, 8000)
    yield sbx
    sbx.kill()
    sbx.close()


def start_app(sbx: Sandbox, port: int) -> CommandHandle:
    sbx.files.write("/tmp/app.py", APP)
    handle = sbx.commands.run(f"exec python3 /tmp/app.py {port}", background=True, tag=f"app-{port}")
    wait_for(lambda: "hello" in sbx.commands.run(f"curl -s -m 2 http://127.0.0.1:{port}/; true").stdout)
    return handle


def wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def proxy(sbx: Sandbox) -> tuple[str, str]:
    """(URL of the proxy on 127.0.0.1, the Host header for port 8000 of ``sbx``)."""
    host = sbx.get_host(8000)
    return f"http://127.0.0.1:{host.rsplit(':', 1)[1]}", host


@pytest.mark.hostile("network", "open another sandbox's private preview without its token, or with a wrong one")
def test_private_preview_needs_the_token(app: Sandbox) -> None:
    base, host = proxy(app)
    assert host.startswith(f"8000-{app.id}.localhost:")
    assert httpx.get(base, headers={"Host": host}).status_code == 401
    wrong = httpx.get(base, headers={"Host": host, TOKEN: "0" * 40})
    assert wrong.status_code == 403 and "Wrong access token" in wrong.text
    ok = httpx.get(f"{base}/x?a=1", headers={"Host": host, TOKEN: app.preview_token})
    assert ok.status_code == 200 and ok.text == "hello preview /x?a=1\n"


def test_a_token_in_the_link_becomes_a_cookie_and_the_app_never_sees_it(app: Sandbox) -> None:
    base, host = proxy(app)
    link = app.get_preview_url(8000, with_token=True)
    assert link.startswith(f"http://{host}/?corral_preview_token=")
    first = httpx.get(f"{base}/headers?corral_preview_token={app.preview_token}&x=1", headers={"Host": host})
    assert first.status_code == 302 and first.headers["location"] == "/headers?x=1"
    cookie = first.headers["set-cookie"].split(";")[0]
    seen = httpx.get(f"{base}/headers", headers={"Host": host, "Cookie": f"{cookie}; theme=dark"})
    assert seen.status_code == 200
    headers = {k.lower(): v for k, v in seen.json().items()}
    assert headers["cookie"] == "theme=dark"  # the app's own cookies pass, corral's does not
    assert app.preview_token not in json.dumps(headers)
    assert headers["x-forwarded-host"] == host and headers["x-forwarded-proto"] == "http"
    via_header = httpx.get(f"{base}/headers", headers={"Host": host, TOKEN: app.preview_token}).json()
    assert TOKEN.lower() not in {k.lower() for k in via_header}


def test_streaming_and_large_bodies_pass(app: Sandbox) -> None:
    base, host = proxy(app)
    headers = {"Host": host, TOKEN: app.preview_token}
    body = os.urandom(24 << 20)
    r = httpx.post(f"{base}/echo", headers=headers, content=body, timeout=120)
    assert r.text == f"{hashlib.sha256(body).hexdigest()} {len(body)}\n"
    arrivals = []
    with httpx.stream("GET", f"{base}/stream", headers=headers, timeout=30) as stream:
        for line in stream.iter_lines():
            arrivals.append(time.monotonic())
            assert line.startswith("chunk ")
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] > 0.3  # each chunk came as it was written, not all at the end


def test_websockets_go_through(app: Sandbox) -> None:
    _, host = proxy(app)
    port = int(host.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    with ws_connect(f"ws://{host}/ws", sock=sock, additional_headers={TOKEN: app.preview_token}) as ws:
        for text in ("one", "two" * 100):
            ws.send(text)
            assert ws.recv(timeout=10) == f"echo: {text}"


def test_proxy_errors_are_clear_pages(app: Sandbox, server: ServerProcess) -> None:
    base, host = proxy(app)
    nothing = httpx.get(base, headers={"Host": host.replace("8000-", "8009-", 1), TOKEN: app.preview_token})
    assert nothing.status_code == 502 and "port 8009" in nothing.text
    unknown = httpx.get(base, headers={"Host": host.replace(app.id, "sbnosuchthing0", 1)})
    assert unknown.status_code == 404 and "No such sandbox" in unknown.text
    assert httpx.get(base, headers={"Host": "example.com"}).status_code == 404
    with socket.create_connection(("127.0.0.1", int(host.rsplit(":", 1)[1]))) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_public_previews_need_no_token(server: ServerProcess) -> None:
    with Sandbox.create(url=server.url, network={"previews": "public"}) as sbx:
        start_app(sbx, 8000)
        base, host = proxy(sbx)
        assert httpx.get(base, headers={"Host": host}).status_code == 200


@pytest.mark.hostile("network", "reach a sandbox's agent (it runs commands as root) through a preview URL or a port")
def test_the_agents_port_is_never_a_preview_nor_published(server: ServerProcess) -> None:
    with Sandbox.create(url=server.url, network={"previews": "public"}) as sbx:
        base, host = proxy(sbx)
        agent_host = host.replace("8000-", f"{AGENT_PORT}-", 1)
        for path in ("/health", "/files?path=/etc/hostname&username=root"):
            r = httpx.get(f"{base}{path}", headers={"Host": agent_host, TOKEN: sbx.preview_token})
            assert r.status_code == 404 and "Not a preview port" in r.text  # a viewer used to get the agent
        with pytest.raises(InvalidRequest, match=f"port {AGENT_PORT} is the sandbox's agent"):
            sbx.publish(AGENT_PORT, host_port=free_port())
        with pytest.raises(InvalidRequest, match=f"port {AGENT_PORT}"):
            Sandbox.create(url=server.url, publish=[f"{free_port()}:{AGENT_PORT}"])
        assert sbx.list_ports() == []


def test_published_ports_forward_and_conflicts_are_named(server: ServerProcess) -> None:
    host_port, busy = free_port(), socket.create_server(("127.0.0.1", 0))
    try:
        with Sandbox.create(url=server.url, publish=[f"{host_port}:8000"]) as sbx:
            assert [(p.host_port, p.port) for p in sbx.info().ports] == [(host_port, 8000)]
            start_app(sbx, 8000)
            assert httpx.get(f"http://127.0.0.1:{host_port}/").text == "hello preview /\n"
            extra = free_port()
            sbx.publish(8000, host_port=extra)
            assert httpx.get(f"http://127.0.0.1:{extra}/").status_code == 200
            sbx.unpublish(extra)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{extra}/")
            taken = busy.getsockname()[1]
            with pytest.raises(PortInUse, match=str(taken)):
                sbx.publish(8000, host_port=taken)
        before = {s.id for s in Sandbox.list(url=server.url)}
        with pytest.raises(PortInUse, match=str(taken)):
            Sandbox.create(url=server.url, publish=[f"{taken}:8000"])
        assert {s.id for s in Sandbox.list(url=server.url)} == before  # no sandbox left behind
    finally:
        busy.close()


def test_auto_publish_mirrors_listeners(server: ServerProcess) -> None:
    port = free_port()
    with Sandbox.create(url=server.url, auto_publish=True) as sbx:
        app = start_app(sbx, port)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200)
        assert any(p.port == port and p.auto for p in sbx.list_ports())
        app.kill()
        wait_for(lambda: all(p.port != port for p in sbx.list_ports()))
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_published_ports_come_back_after_a_restart(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", subnet_index=26 + worker_index()).running() as proc:
        host_port = free_port()
        sbx = Sandbox.create(url=proc.url, publish=[f"{host_port}:8000"])
        start_app(sbx, 8000)
        proc.kill9()
        proc.start()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{host_port}/", timeout=2).status_code == 200)
        again = Sandbox.connect(sbx.id, url=proc.url)
        base, host = proxy(again)
        assert httpx.get(base, headers={"Host": host, TOKEN: again.preview_token}).status_code == 200  # same token


@pytest.mark.checkpoint
def test_a_preview_hit_wakes_a_hibernated_sandbox(server: ServerProcess) -> None:
    with Sandbox.create(url=server.url) as sbx:
        start_app(sbx, 8000)
        assert sbx.hibernate().state == "hibernated"
        base, host = proxy(sbx)
        r = httpx.get(f"{base}/woken", headers={"Host": host, TOKEN: sbx.preview_token}, timeout=60)
        assert r.status_code == 200 and r.text == "hello preview /woken\n"
        assert sbx.info().state == "running"
