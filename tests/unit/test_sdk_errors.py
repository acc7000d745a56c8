"""Every error the server can send comes back as its own class; transport failures are mapped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from corral import (
    AsyncSandbox,
    CommandExitError,
    ConnectionConfig,
    CorralError,
    Sandbox,
    SandboxInfo,
    ServerUnavailable,
)
from corral.errors import ERRORS_BY_CODE, InternalError, NotFound, SandboxNotFound
from corral.sdk import _http


def _answer(monkeypatch: pytest.MonkeyPatch, response: httpx.Response) -> None:
    """Answer every request with a fresh copy of ``response`` (its body is read once)."""

    def copy(request: httpx.Request) -> httpx.Response:
        if isinstance(response.stream, httpx.ByteStream):
            return httpx.Response(response.status_code, headers=response.headers, content=response.read())
        return response

    transport = httpx.MockTransport(copy)
    monkeypatch.setattr(_http, "sync_transport", transport)
    monkeypatch.setattr(_http, "async_transport", transport)


def _envelope(code: str, status: int) -> httpx.Response:
    details = {"sandbox_id": "sbx-1", "hint": [1, 2]}
    return httpx.Response(status, json={"error": {"code": code, "message": f"it was {code}", "details": details}})


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_every_code_round_trips_to_its_class(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = ERRORS_BY_CODE[code]
    _answer(monkeypatch, _envelope(code, cls.status))
    with pytest.raises(CorralError) as info:
        Sandbox.connect("sbx-1")
    assert type(info.value) is cls
    assert info.value.message == f"it was {code}"
    assert info.value.details == {"sandbox_id": "sbx-1", "hint": [1, 2]}

    with pytest.raises(CorralError) as async_info:
        asyncio.run(AsyncSandbox.connect("sbx-1"))
    assert type(async_info.value) is cls


def test_unknown_code_falls_back_by_status(monkeypatch: pytest.MonkeyPatch) -> None:
    _answer(monkeypatch, _envelope("brand_new_code", 404))
    with pytest.raises(NotFound):
        Sandbox.list()


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(500, json={"detail": "not our envelope"}),
    ],
)
def test_a_body_that_is_not_an_envelope_is_internal_error(
    response: httpx.Response, monkeypatch: pytest.MonkeyPatch
) -> None:
    _answer(monkeypatch, response)
    with pytest.raises(InternalError) as info:
        Sandbox.list()
    assert str(response.status_code) in info.value.message


def test_errors_inside_a_stream_arrive_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _answer(monkeypatch, _envelope("sandbox_not_found", 404))
    with pytest.raises(SandboxNotFound):
        Sandbox(_info("sbx-1"), _http.SyncHTTP(_config())).commands.run("x", on_stdout=print)


def _info(sid: str) -> SandboxInfo:
    return SandboxInfo(id=sid, image="i", state="running")


def _config() -> ConnectionConfig:
    return ConnectionConfig("http://corral.test")


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError],
)
def test_every_transport_failure_is_server_unavailable(
    exc: type[httpx.TransportError], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("down", request=request)

    transport = httpx.MockTransport(fail)
    monkeypatch.setattr(_http, "sync_transport", transport)
    monkeypatch.setattr(_http, "async_transport", transport)
    with pytest.raises(ServerUnavailable) as info:
        Sandbox.list(url="http://127.0.0.1:9")
    assert isinstance(info.value.__cause__, exc)
    with pytest.raises(ServerUnavailable):
        asyncio.run(AsyncSandbox.list())


def test_a_stream_that_breaks_mid_body_is_server_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"type":"start","pid":3}\n{"type":"stdout","data":"a"}\n'
            raise httpx.ReadError("connection reset")

    _answer(monkeypatch, httpx.Response(200, stream=Broken()))
    got: list[str] = []
    with pytest.raises(ServerUnavailable):
        Sandbox(_info("sbx-1"), _http.SyncHTTP(_config())).commands.run("x", on_stdout=got.append)
    assert got == ["a"]


def test_bad_stream_lines_and_error_events(monkeypatch: pytest.MonkeyPatch) -> None:
    _answer(monkeypatch, httpx.Response(200, content=b"not json\n"))
    with pytest.raises(InternalError):
        Sandbox(_info("sbx-1"), _http.SyncHTTP(_config())).commands.run("x", on_stdout=print)
    event = b'{"type":"error","error":{"code":"agent_unavailable","message":"agent gone"}}\n'
    _answer(monkeypatch, httpx.Response(200, content=event))
    with pytest.raises(ConnectionError, match="agent gone"):
        Sandbox(_info("sbx-1"), _http.SyncHTTP(_config())).commands.run("x", on_stdout=print)


def test_sdk_errors_stay_out_of_the_server_table() -> None:
    for cls in (CommandExitError, ServerUnavailable):
        assert issubclass(cls, CorralError)
        assert cls.code not in ERRORS_BY_CODE
    assert issubclass(ServerUnavailable, ConnectionError)
