"""Bad input against a real server: one envelope each, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from corral import Sandbox
from corral.errors import ImageNotFound, InvalidRequest, SandboxNotFound


def _alive(url: str) -> None:
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_unknown_sandbox_is_a_404_envelope(corral_url: str) -> None:
    for method, path in [
        ("GET", "/v1/sandboxes/sbnope"),
        ("DELETE", "/v1/sandboxes/sbnope"),
        ("POST", "/v1/sandboxes/sbnope/exec"),
        ("GET", "/v1/sandboxes/sbnope/files?path=/x"),
    ]:
        body = {"cmd": "true"} if path.endswith("exec") else None
        r = httpx.request(method, corral_url + path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "sandbox_not_found"
        assert "sbnope" in r.json()["error"]["message"]
    with pytest.raises(SandboxNotFound):
        Sandbox.connect("sbnope")
    _alive(corral_url)


def test_unknown_image_names_it(corral_url: str) -> None:
    with pytest.raises(ImageNotFound) as info:
        Sandbox.create("corral/no-such:1")  # a local name: nothing is asked of any registry
    assert "corral/no-such:1" in str(info.value)
    _alive(corral_url)


def test_malformed_json_and_bad_values(corral_url: str, sandbox) -> None:
    r = httpx.post(f"{corral_url}/v1/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(f"{corral_url}/v1/sandboxes", json={"vcpus": "many"})
    assert r.status_code == 422 and "vcpus" in r.json()["error"]["message"]
    r = httpx.post(f"{corral_url}/v1/sandboxes", json={"memory_mb": 10**9})
    assert r.status_code == 422 and "memory_mb" in r.json()["error"]["message"]
    r = httpx.post(f"{corral_url}/v1/sandboxes/{sandbox.id}/exec", json={"cmd": "true", "argv": ["true"]})
    assert r.status_code == 422
    r = httpx.post(f"{corral_url}/v1/sandboxes/{sandbox.id}/exec", json={"cmd": ["echo", "hi"]})
    assert r.status_code == 422 and "as argv" in r.json()["error"]["message"]  # was "Input should be a valid string"
    with pytest.raises(InvalidRequest):
        Sandbox.create(vcpus=10_000)
    _alive(corral_url)


def test_oversized_json_body_is_refused(corral_url: str, sandbox) -> None:
    r = httpx.post(f"{corral_url}/v1/sandboxes/{sandbox.id}/exec", json={"cmd": "x" * (2 << 20)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert sandbox.commands.run("echo still").stdout == "still\n"
    _alive(corral_url)


def test_unknown_process_and_signal(corral_url: str, sandbox) -> None:
    r = httpx.post(f"{corral_url}/v1/sandboxes/{sandbox.id}/processes/999999/signal", json={"signal": "SIGTERM"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "process_not_found"
    r = httpx.post(f"{corral_url}/v1/sandboxes/{sandbox.id}/processes/1/signal", json={"signal": "SIGNOPE"})
    assert r.status_code == 422
    _alive(corral_url)
