"""The sync SDK's sandbox lifecycle and connection settings, against the in-process fake."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from corral import (
    AuthenticationError,
    ConnectionConfig,
    Sandbox,
    SandboxInfo,
    SandboxNotFound,
    ServerUnavailable,
)
from corral.sdk import _http
from corral.sdk.config import DEFAULT_URL
from tests.unit.sdk_fake import URL, FakeCorral, install


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeCorral:
    return install(monkeypatch)


# connection settings


def test_config_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    assert ConnectionConfig().url == DEFAULT_URL == "http://127.0.0.1:7423"
    assert ConnectionConfig().api_key is None
    monkeypatch.setenv("CORRAL_URL", "http://from-env:1/")
    monkeypatch.setenv("CORRAL_API_KEY", "env-key")
    assert ConnectionConfig().url == "http://from-env:1"
    assert ConnectionConfig().api_key == "env-key"
    config = ConnectionConfig("http://from-arg:2", api_key="arg-key", request_timeout=5)
    assert (config.url, config.api_key, config.request_timeout) == ("http://from-arg:2", "arg-key", 5)
    assert "arg-key" not in repr(config)


def test_api_key_header_only_when_set(fake: FakeCorral, monkeypatch: pytest.MonkeyPatch) -> None:
    Sandbox.list()
    assert "x-api-key" not in fake.last().headers
    monkeypatch.setenv("CORRAL_API_KEY", "k-env")
    Sandbox.list()
    assert fake.last().headers["x-api-key"] == "k-env"
    Sandbox.list(api_key="k-arg")
    assert fake.last().headers["x-api-key"] == "k-arg"


def test_url_argument_is_used(fake: FakeCorral, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return fake.handle(request)

    monkeypatch.setattr(_http, "sync_transport", httpx.MockTransport(handler))
    Sandbox.list(url="http://elsewhere:9/")
    assert seen == ["http://elsewhere:9/v1/sandboxes"]


def test_request_timeout_reaches_httpx(fake: FakeCorral, monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return fake.handle(request)

    monkeypatch.setattr(_http, "sync_transport", httpx.MockTransport(handler))
    Sandbox.list(request_timeout=7)
    assert timeouts[-1]["connect"] == 7 and timeouts[-1]["read"] == 7
    sbx = Sandbox.create(request_timeout=7)
    assert timeouts[-1]["read"] is not None and timeouts[-1]["read"] > 7  # creating may unpack an image
    sbx.commands.run("echo hi", timeout=30)
    assert timeouts[-1]["read"] == 37  # a command's own timeout on top
    sbx.commands.run("echo hi", timeout=None)
    assert timeouts[-1]["read"] is None
    Sandbox.list(request_timeout=None)
    assert timeouts[-1]["connect"] is None


def test_wrong_api_key_is_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeCorral(api_key="right"))
    with pytest.raises(AuthenticationError) as info:
        Sandbox.list(api_key="wrong")
    assert isinstance(info.value, PermissionError)
    assert Sandbox.list(api_key="right") == []


def test_server_down_is_server_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    monkeypatch.setattr(_http, "sync_transport", httpx.MockTransport(refuse))
    with pytest.raises(ServerUnavailable) as info:
        Sandbox.create(url="http://127.0.0.1:1")
    assert isinstance(info.value, ConnectionError)
    assert info.value.code == "server_unavailable"
    assert "http://127.0.0.1:1" in info.value.message


# lifecycle


def test_create_sends_only_what_was_given(fake: FakeCorral) -> None:
    sbx = Sandbox.create()
    assert fake.last().body == {}
    assert (fake.last().method, fake.last().path) == ("POST", "/v1/sandboxes")
    assert sbx.id == sbx.sandbox_id and sbx.id in fake.sandboxes
    assert sbx.config.url == URL

    Sandbox.create(
        "python:3",
        vcpus=2,
        memory_mb=1024,
        envs={"A": "1"},
        metadata={"owner": "alice"},
        timeout=90.5,
    )
    assert fake.last().body == {
        "image": "python:3",
        "vcpus": 2,
        "memory_mb": 1024,
        "envs": {"A": "1"},
        "metadata": {"owner": "alice"},
        "timeout": 91,
    }


def test_info_is_typed(fake: FakeCorral) -> None:
    sbx = Sandbox.create(metadata={"owner": "alice"})
    info = sbx.get_info()
    assert isinstance(info, SandboxInfo)
    assert info.state == "running" and info.metadata == {"owner": "alice"}
    assert info.created_at == datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
    assert info.vcpus == 1 and info.memory_mb == 512 and info.address == "10.88.0.6"
    assert info.to_json()["created_at"] == "2026-11-23T20:00:00Z"
    assert SandboxInfo.from_json(info.to_json()) == info
    assert sbx.info() == info
    assert (fake.last().method, fake.last().path) == ("GET", f"/v1/sandboxes/{sbx.id}")


def test_last_info_is_what_the_server_said_last_without_asking_again(fake: FakeCorral) -> None:
    sbx = Sandbox.create(metadata={"owner": "alice"})
    sent = len(fake.requests)
    assert sbx.last_info.id == sbx.id and sbx.last_info.metadata == {"owner": "alice"}
    assert len(fake.requests) == sent
    sbx.set_timeout(120)
    assert sbx.last_info.timeout == 120 and len(fake.requests) == sent + 1


def test_fields_a_newer_server_adds_are_ignored() -> None:
    info = SandboxInfo.from_json({"id": "s", "image": "i", "state": "running", "gpu": "none"})
    assert info.id == "s" and info.ends_at is None


def test_list_filters_by_state_and_metadata(fake: FakeCorral) -> None:
    a = fake.add_sandbox(metadata={"team": "red", "env": "ci"})
    fake.add_sandbox(metadata={"team": "blue"})
    fake.add_sandbox(state="dead", metadata={"team": "red", "env": "ci"})
    found = Sandbox.list(state="running", metadata={"team": "red", "env": "ci"})
    assert [s.id for s in found] == [a]
    assert fake.last().params == [("state", "running"), ("metadata", "team=red"), ("metadata", "env=ci")]
    assert len(Sandbox.list()) == 3
    assert fake.last().params == []


def test_connect(fake: FakeCorral) -> None:
    sid = fake.add_sandbox()
    sbx = Sandbox.connect(sid)
    assert sbx.id == sid and sbx.is_running()
    with pytest.raises(SandboxNotFound) as info:
        Sandbox.connect("sbx-nope")
    assert info.value.details == {"sandbox_id": "sbx-nope"}


def test_set_timeout_logs_and_kill(fake: FakeCorral) -> None:
    sbx = Sandbox.create()
    assert sbx.set_timeout(0).ends_at is None
    assert fake.last().body == {"timeout": 0}
    assert sbx.set_timeout(120).ends_at is not None
    assert fake.last().body == {"timeout": 120}
    assert sbx.logs() == "agent: started\nruntime: ok\n"
    assert sbx.logs(tail=1) == "runtime: ok\n"
    assert fake.last().params == [("tail", "1")]
    assert sbx.kill() is True
    assert (fake.last().method, fake.last().path) == ("DELETE", f"/v1/sandboxes/{sbx.id}")
    assert sbx.kill() is False
    assert sbx.is_running() is False
    sbx.close()


def test_is_running_false_for_dead(fake: FakeCorral) -> None:
    sbx = Sandbox.connect(fake.add_sandbox(state="dead", error="oom"))
    assert sbx.is_running() is False
    assert sbx.info().error == "oom"


def test_context_manager_kills_even_on_error(fake: FakeCorral) -> None:
    with Sandbox.create() as sbx:
        assert sbx.id in fake.sandboxes
    assert sbx.id not in fake.sandboxes
    with pytest.raises(RuntimeError), Sandbox.create() as other:
        raise RuntimeError("boom")
    assert other.id not in fake.sandboxes
    assert repr(other).startswith("<Sandbox sbx-")
