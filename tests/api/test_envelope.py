"""The API layer in process, with no sandbox: one JSON error envelope, pinned.

The app is the real one (routes, middleware, store, orchestrator) over a
runtime that only records what it is asked, so these tests cover everything
above the runtime seam. Like datasette's ``test_error_shape``: every error
body is exactly ``{"error": {"code", "message", "details"?}}``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Settings
from corral.errors import ERRORS_BY_CODE, CorralError, InternalError, error_from_envelope
from corral.images.store import Image, ImageStore
from corral.runtimes.base import Runtime, RuntimeHandle, RuntimeState, SandboxSpec
from corral.server.app import create_app
from corral.server.serve import (
    CHATTY_LOGGERS,
    MAX_OPEN_FILES,
    check_bind,
    configure_logging,
    is_loopback,
)
from tests.envelope import envelope_error

pytestmark = pytest.mark.anyio

BOOM = "BOOM"
"""An env var that makes the fake runtime's ``create`` fail like a bug would."""


class RecordingRuntime(Runtime):
    """Records every call; runs nothing. Its sandboxes' agents never answer."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def create(self, spec: SandboxSpec) -> RuntimeHandle:
        self.calls.append(("create", spec.sandbox_id))
        if BOOM in spec.envs:
            raise ZeroDivisionError(spec.envs[BOOM])
        # Port 9 (discard) on loopback: nothing answers, so the agent never comes up.
        return RuntimeHandle(spec.sandbox_id, "http://127.0.0.1:9", {"slot": spec.network.slot})

    async def state(self, handle: RuntimeHandle) -> RuntimeState:
        self.calls.append(("state", handle.sandbox_id))
        return RuntimeState.MISSING

    async def stop(self, handle: RuntimeHandle) -> None:
        self.calls.append(("stop", handle.sandbox_id))

    async def destroy(self, handle: RuntimeHandle) -> None:
        self.calls.append(("destroy", handle.sandbox_id))

    async def leftovers(self, known: set[str]) -> list[RuntimeHandle]:
        return []

    async def export_changes(self, handle: RuntimeHandle, dest: Path) -> None:
        self.calls.append(("export_changes", handle.sandbox_id))

    async def logs(self, handle: RuntimeHandle, *, tail: int | None = None) -> str:
        self.calls.append(("logs", handle.sandbox_id))
        return "fake console\n"


@pytest.fixture(autouse=True)
def _no_corral_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read CORRAL_* variables: keep the caller's out of these tests."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    # An image the store accepts, so requests get past the image check.
    store = ImageStore(tmp_path)
    layer = store.work_dir("layer")
    with store.locked():
        store.add_layer("0" * 64, layer)
        store.add_image(Image(id="1" * 64, layers=("0" * 64,)), names=("corral/base",))
    return tmp_path


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(data_dir: Path, runtime: RecordingRuntime) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=data_dir,
        max_json_body_kb=1,
        max_upload_mb=1,
        max_vcpus=4,
        start_timeout=0.3,
        reaper_interval=60,
    )
    app = create_app(settings, runtime=runtime)
    # Errors must come back as responses, not be re-raised into the test.
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The envelope's ``error``, after checking the envelope's exact shape."""
    assert response.status_code == status, response.text
    error = envelope_error(status, response.headers["content-type"], response.content)
    assert error["code"] == code, error
    return error


# -- routing -------------------------------------------------------------------


async def test_unknown_route_is_not_found(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/nothing-here"), 404, "not_found")
    assert "/v1/nothing-here" in error["message"]
    error_of(await client.post("/v2/sandboxes", json={}), 404, "not_found")


async def test_wrong_method_is_an_envelope(client: httpx.AsyncClient) -> None:
    error = error_of(await client.put("/health"), 405, "method_not_allowed")
    assert "PUT" in error["message"] and "/health" in error["message"]
    error_of(await client.patch("/v1/sandboxes"), 405, "method_not_allowed")


async def test_health_is_plain_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


# -- request validation --------------------------------------------------------


async def test_malformed_json(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    r = await client.post("/v1/sandboxes", content=b'{"vcpus": 1', headers={"content-type": "application/json"})
    error = error_of(r, 422, "invalid_request")
    errors = error["details"]["errors"]
    assert errors and all(set(e) == {"where", "problem", "type"} for e in errors)
    assert errors[0]["type"] == "json_invalid"
    assert runtime.calls == []


async def test_wrong_types_name_each_field(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    r = await client.post("/v1/sandboxes", json={"vcpus": "many", "memory_mb": [1], "envs": {"A": 1}})
    error = error_of(r, 422, "invalid_request")
    where = {e["where"] for e in error["details"]["errors"]}
    assert {"vcpus", "memory_mb", "envs.A"} <= where
    assert "vcpus" in error["message"]
    assert runtime.calls == []


async def test_environments_no_process_could_start_with_are_refused(
    client: httpx.AsyncClient, runtime: RecordingRuntime
) -> None:
    for envs in ({"A=B": "1"}, {"": "1"}, {"A": "x\x00y"}):
        error = error_of(await client.post("/v1/sandboxes", json={"envs": envs}), 422, "invalid_request")
        assert error["details"]["errors"][0]["where"] == "envs", error
    r = await client.post("/v1/sandboxes/sbnope/exec", json={"cmd": "true", "envs": {"A=B": "1"}})
    assert "environment variable name" in error_of(r, 422, "invalid_request")["message"]
    assert runtime.calls == []  # nothing was made with them


async def test_a_user_with_a_group_is_refused_where_the_group_would_be_lost(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sandboxes/sbnope/exec", json={"cmd": "id", "user": "user:root"})
    assert "a group cannot be given here" in error_of(r, 422, "invalid_request")["message"]
    r = await client.get("/v1/sandboxes/sbnope/files/stat", params={"path": "/", "user": "user:root"})
    assert "a group cannot be given here" in error_of(r, 422, "invalid_request")["message"]
    r = await client.post("/v1/sandboxes/sbnope/files/mkdir", json={"path": "/d", "user": "user:root"})
    assert "a group cannot be given here" in error_of(r, 422, "invalid_request")["message"]
    r = await client.post("/v1/sandboxes/sbnope/exec", json={"cmd": "id", "user": "1000"})
    error_of(r, 404, "sandbox_not_found")  # a uid is a user


async def test_unknown_fields_are_refused(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    error = error_of(await client.post("/v1/sandboxes", json={"vcpu": 2}), 422, "invalid_request")
    assert error["details"]["errors"] == [
        {"where": "vcpu", "problem": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    r = await client.post("/v1/sandboxes/sbnope/exec", json={"cmd": "true", "shell": "zsh"})
    assert "shell" in error_of(r, 422, "invalid_request")["message"]
    assert runtime.calls == []


async def test_bad_query_values(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/v1/sandboxes", params={"state": "sleeping"}), 422, "invalid_request")
    assert "sleeping" in error["message"]
    error_of(await client.get("/v1/sandboxes", params={"metadata": "novalue"}), 422, "invalid_request")
    error = error_of(await client.get("/v1/sandboxes/sbnope/logs", params={"tail": "-1"}), 422, "invalid_request")
    assert error["details"]["errors"][0]["where"] == "query.tail"


# -- body limits ---------------------------------------------------------------


async def test_json_body_over_the_limit_with_content_length(
    client: httpx.AsyncClient, runtime: RecordingRuntime
) -> None:
    body = json.dumps({"metadata": {"k": "x" * 2000}}).encode()
    r = await client.post("/v1/sandboxes", content=body, headers={"content-type": "application/json"})
    assert "content-length" in r.request.headers
    error = error_of(r, 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 1024}
    assert runtime.calls == []


async def test_json_body_over_the_limit_chunked(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"metadata": {"k": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}}'

    r = await client.post("/v1/sandboxes", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    error = error_of(r, 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": 1024}
    assert runtime.calls == []


async def test_json_body_under_the_limit_passes(client: httpx.AsyncClient) -> None:
    # Just under 1 KiB gets through the limit to the route (which finds no such sandbox).
    body = json.dumps({"cmd": "x" * 900}).encode()
    assert len(body) <= 1024
    r = await client.post("/v1/sandboxes/sbnope/exec", content=body, headers={"content-type": "application/json"})
    error_of(r, 404, "sandbox_not_found")


async def test_upload_limit(client: httpx.AsyncClient) -> None:
    params = {"path": "/home/user/big"}
    over = await client.put("/v1/sandboxes/sbnope/files", params=params, content=b"\0" * ((1 << 20) + 1))
    assert error_of(over, 413, "payload_too_large")["details"] == {"limit_bytes": 1 << 20}
    assert "upload" in over.json()["error"]["message"]
    # An upload is held to the upload limit, not the JSON one: 64 KiB reaches the route.
    under = await client.put("/v1/sandboxes/sbnope/files", params=params, content=b"\0" * (64 << 10))
    error_of(under, 404, "sandbox_not_found")


# -- the orchestrator's errors -------------------------------------------------


async def test_unknown_sandbox(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/sandboxes/sbnope"),
        ("DELETE", "/v1/sandboxes/sbnope"),
        ("GET", "/v1/sandboxes/sbnope/logs"),
        ("GET", "/v1/sandboxes/sbnope/processes"),
        ("GET", "/v1/sandboxes/sbnope/files/stat?path=/x"),
    ]:
        error = error_of(await client.request(method, path), 404, "sandbox_not_found")
        assert error["details"] == {"sandbox_id": "sbnope"}, (method, path)
        assert "sbnope" in error["message"]
    error_of(await client.post("/v1/sandboxes/sbnope/timeout", json={"timeout": 5}), 404, "sandbox_not_found")


async def test_unknown_image_names_it(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    error = error_of(await client.post("/v1/sandboxes", json={"image": "corral/no-such:1"}), 404, "image_not_found")
    assert "corral/no-such:1" in error["message"]
    assert error["details"] == {"image": "corral/no-such:1"}
    error = error_of(await client.post("/v1/sandboxes", json={"image": "../etc"}), 422, "invalid_request")
    for field in ("image", "template", "snapshot"):  # an empty name is a caller's mistake, not "the default"
        error = error_of(await client.post("/v1/sandboxes", json={field: ""}), 422, "invalid_request")
        assert error["message"].startswith(f"{field}: ")
    assert runtime.calls == []


async def test_limits_over_the_maximum(client: httpx.AsyncClient, runtime: RecordingRuntime) -> None:
    error = error_of(await client.post("/v1/sandboxes", json={"vcpus": 5}), 422, "invalid_request")
    assert error["details"] == {"field": "vcpus", "value": 5}
    assert "between 1 and 4" in error["message"]
    error = error_of(await client.post("/v1/sandboxes", json={"vcpus": 0}), 422, "invalid_request")
    assert error["details"]["errors"][0]["where"] == "vcpus"
    error = error_of(await client.post("/v1/sandboxes", json={"timeout": 10**9}), 422, "invalid_request")
    assert error["details"]["field"] == "timeout"
    assert runtime.calls == []


async def test_agent_that_never_answers_is_a_runtime_error(
    client: httpx.AsyncClient, runtime: RecordingRuntime
) -> None:
    error = error_of(await client.post("/v1/sandboxes", json={}), 500, "runtime_error")
    assert "did not answer" in error["message"]
    assert error["details"] == {"console": "fake console\n"}
    created = [sid for call, sid in runtime.calls if call == "create"]
    assert len(created) == 1
    assert ("destroy", created[0]) in runtime.calls  # nothing of it is left behind
    assert (await client.get("/v1/sandboxes")).json() == {"sandboxes": [], "next_token": None}


async def test_unexpected_exception_is_internal_without_traceback(
    client: httpx.AsyncClient, runtime: RecordingRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.post("/v1/sandboxes", json={"envs": {BOOM: "kaboom"}})
    error = error_of(r, 500, "internal")
    assert "Traceback" not in r.text and 'File "' not in r.text and ".py" not in r.text
    assert "details" not in error and "kaboom" not in r.text
    # The server's log has the whole story.
    assert any(rec.exc_info and rec.exc_info[0] is ZeroDivisionError for rec in caplog.records)
    created = [sid for call, sid in runtime.calls if call == "create"]
    assert ("destroy", created[0]) in runtime.calls
    assert (await client.get("/v1/sandboxes")).json() == {"sandboxes": [], "next_token": None}
    assert (await client.get("/health")).status_code == 200


# -- the error table -------------------------------------------------------------


def _subclasses(cls: type[CorralError]) -> list[type[CorralError]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_every_code_is_distinct_with_an_error_status() -> None:
    import corral.sdk  # noqa: F401 - its client-side errors (never sent by a server) join the tree

    classes = _subclasses(CorralError)
    codes = [cls.code for cls in classes]
    # A code shared by two classes would silently drop one from the table.
    assert len(codes) == len(set(codes)), sorted(codes)
    assert set(ERRORS_BY_CODE) == {cls.code for cls in classes if cls.__module__ == "corral.errors"}
    assert ERRORS_BY_CODE["internal"] is InternalError  # not the root, which shares its code
    for code, cls in ERRORS_BY_CODE.items():
        assert cls.code == code
        assert 400 <= cls.status <= 599, (code, cls.status)
        assert code.isidentifier() and code.islower(), code
        assert cls("m").envelope() == {"error": {"code": code, "message": "m"}}
        assert error_from_envelope(cls.status, cls("m", details={"a": 1}).envelope()).__class__ is cls


# -- binding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("192.0.2.1", False),
        ("example.test", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind(tmp_path: Path) -> None:
    from corral.errors import InvalidRequest

    check_bind(Settings(data_dir=tmp_path))
    check_bind(Settings(data_dir=tmp_path, host="::1"))
    for host in ("0.0.0.0", "10.0.0.1"):
        with pytest.raises(InvalidRequest, match=f"refusing to listen on {host} without an API key"):
            check_bind(Settings(data_dir=tmp_path, host=host))
        with pytest.raises(InvalidRequest, match="without an API key"):  # an empty key is no key
            check_bind(Settings(data_dir=tmp_path, host=host, api_key=""))
        check_bind(Settings(data_dir=tmp_path, host=host, api_key="s3cret"))
        check_bind(Settings(data_dir=tmp_path, host=host, api_key_sha256="ab" * 32))


def test_the_server_raises_its_open_files_limit() -> None:
    # In a child whose soft limit is a login shell's: the test's own process keeps its limit.
    code = (
        "import resource; from corral.server.serve import raise_open_files_limit;"
        "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0];"
        "now = raise_open_files_limit();"
        "print(before, now, *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = min(hard, MAX_OPEN_FILES) if hard != resource.RLIM_INFINITY else MAX_OPEN_FILES
    assert [int(n) for n in out] == [256, wanted, wanted, hard]


@pytest.mark.parametrize(("level", "logs_requests"), [("info", False), ("warning", False), ("debug", True)])
def test_the_server_log_has_chatty_library_lines_only_at_debug(level: str, logs_requests: bool) -> None:
    chatty, root = [logging.getLogger(name) for name in CHATTY_LOGGERS], logging.getLogger()
    saved = [log.level for log in chatty], root.level, root.handlers[:]
    try:
        root.handlers[:] = []  # as in a fresh server process (pytest's own are put back below)
        configure_logging(level)
        assert "httpx" in CHATTY_LOGGERS
        assert [log.isEnabledFor(logging.INFO) for log in chatty] == [logs_requests] * len(chatty)
        assert logging.getLogger("corral.core.sandboxes").isEnabledFor(logging.INFO) is (level != "warning")
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO) is (level != "warning")
    finally:
        for log, was in zip(chatty, saved[0], strict=True):
            log.setLevel(was)
        root.setLevel(saved[1])
        root.handlers[:] = saved[2]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give exactly one of 'data' (text) or 'data_base64' (bytes)"),
        ({"data": "a", "data_base64": "YQ=="}, "give exactly one of 'data' (text) or 'data_base64' (bytes)"),
        ({"data_base64": "not base64!"}, "data_base64 is not base64"),
        ({"data_base64": "\ue42cav\x86íú\n"}, "data_base64 is not base64"),  # found by tests/proof/test_fuzz.py
    ],
)
async def test_stdin_writes_are_text_or_base64_bytes(
    client: httpx.AsyncClient, runtime: RecordingRuntime, body: dict[str, Any], message: str
) -> None:
    answer = await client.post("/v1/sandboxes/sbnothere/processes/1/stdin", json=body)
    assert message in error_of(answer, 422, "invalid_request")["message"]
    assert runtime.calls == []


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"": "v"}, "a label's key is 1 to 256 characters, got 0"),
        ({"k" * 257: "v"}, "a label's key is 1 to 256 characters, got 257"),
        ({f"k{i}": "v" for i in range(65)}, "at most 64 labels, got 65"),
    ],
    ids=["empty-key", "long-key", "many"],
)
async def test_metadata_is_small(
    client: httpx.AsyncClient, runtime: RecordingRuntime, metadata: dict[str, str], problem: str
) -> None:
    # A megabyte of labels was taken, and every list of sandboxes carried it after.
    for path in ("/v1/sandboxes", "/v1/sandboxes/sbnothere/snapshots", "/v1/sandboxes/sbnothere/fork"):
        answer = await client.post(path, json={"metadata": metadata})
        assert problem in error_of(answer, 422, "invalid_request")["message"], path
    assert runtime.calls == []


def test_a_label_value_is_at_most_4096_characters() -> None:
    # Past this test client's 1 KiB body limit: checked on the schema itself.
    from pydantic import ValidationError

    from corral.server.schemas import CreateSandbox

    CreateSandbox(metadata={"k": "x" * 4096})
    with pytest.raises(ValidationError, match="label 'k' holds 4097 characters; at most 4096"):
        CreateSandbox(metadata={"k": "x" * 4097})


async def test_stdin_open_needs_a_stream_or_the_background(
    client: httpx.AsyncClient, runtime: RecordingRuntime
) -> None:
    # A plain exec answers only at the end: nobody would know the pid to write to.
    answer = await client.post("/v1/sandboxes/sbnothere/exec", json={"cmd": "cat", "stdin_open": True})
    assert "stdin_open needs stream: true or background: true" in error_of(answer, 422, "invalid_request")["message"]
    assert runtime.calls == []


# -- numbers too large to store (found by tests/proof/test_fuzz.py) ----------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/sandboxes", {"auto_pause": 2**63}, "auto_pause"),
        ("PUT", "/v1/templates/big", {"dockerfile": "FROM corral/base", "vcpus": 2**63}, "vcpus"),
        ("PUT", "/v1/templates/big", {"dockerfile": "FROM corral/base", "memory_mb": 2**63}, "memory_mb"),
    ],
)
async def test_a_number_too_large_to_store_is_refused(
    client: httpx.AsyncClient, runtime: RecordingRuntime, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    # Each was a 500: SQLite stores 64-bit integers, and nothing bounded these.
    error = error_of(await client.request(method, path, json=body), 422, "invalid_request")
    assert error["details"]["errors"][0]["where"] == field, error
    assert runtime.calls == []
