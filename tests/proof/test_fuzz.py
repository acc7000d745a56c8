"""API fuzzing: requests generated from the live server's own /openapi.json never break it.

Every operation gets a bounded, seeded, derandomized set of generated
requests (valid and invalid ones) against a real ``corral serve``: no answer
is a 5xx, and every non-2xx answer is exactly the error envelope.
Operations under a sandbox are aimed at one real sandbox (made for this
module) where that cannot end or disable it, so their bodies and queries
reach the agent rather than stopping at a 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.generation.modes import GenerationMode

from corral.errors import InvalidRequest
from corral.images import reference
from tests.envelope import envelope_error
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("proof")]

EXAMPLES = 20
"""Generated requests per operation and mode (valid, invalid): the bound on the test's length."""
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same requests every run: a finding is reproduced by running the test again
    database=None,
    deadline=None,
    phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate),  # no shrinking: report the first failure
    suppress_health_check=list(hypothesis.HealthCheck),
)

EXCLUDED = {
    # Pulls reach the registry a generated name points at: traffic off this host.
    ("POST", "/v1/images"),
    # The image store is shared by every server on this host (tests/serverproc.py): never removed from here.
    ("POST", "/v1/images/gc"),
    ("DELETE", "/v1/images/{name}"),
    # A build pulls the image its recipe starts from (off this host) and runs its steps in new sandboxes.
    ("POST", "/v1/templates/{name}/builds"),
    # A pool starts sandboxes in the background, as many as asked and for as long as it exists.
    ("PUT", "/v1/pools/{key}"),
}

AIMED = {
    ("GET", "/v1/sandboxes/{sandbox_id}"),
    ("POST", "/v1/sandboxes/{sandbox_id}/exec"),
    ("GET", "/v1/sandboxes/{sandbox_id}/processes"),
    ("GET", "/v1/sandboxes/{sandbox_id}/logs"),
    ("GET", "/v1/sandboxes/{sandbox_id}/ports"),
    ("PUT", "/v1/sandboxes/{sandbox_id}/network"),
    ("GET", "/v1/sandboxes/{sandbox_id}/files"),
    # Not PUT .../files: generated uploads (as root, too) could replace the sandbox's own
    # files that other cases rely on, such as /etc/passwd; the targeted tests below send them.
    ("GET", "/v1/sandboxes/{sandbox_id}/files/list"),
    ("GET", "/v1/sandboxes/{sandbox_id}/files/stat"),
    ("GET", "/v1/sandboxes/{sandbox_id}/files/exists"),
    ("POST", "/v1/sandboxes/{sandbox_id}/files/mkdir"),
}
"""Operations sent to the real sandbox: none of them can kill, pause, time out or empty it."""

EXEC_TIMEOUT = 5
"""Seconds a generated command may run (generated ones may wait for ever, as ``cat`` does)."""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Whatever pull slips through goes nowhere: to a loopback port that answers nothing.
    nowhere = "http://127.0.0.1:9"
    env = {"HTTPS_PROXY": nowhere, "HTTP_PROXY": nowhere, "ALL_PROXY": nowhere, "NO_PROXY": "127.0.0.1,localhost"}
    data: Path = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(data, subnet_index=14 + worker_index(), env=env).running() as proc:
        yield proc


@pytest.fixture(scope="module")
def target(fuzz_server: ServerProcess) -> str:
    """The real sandbox aimed-at operations act on (killed with the server's others)."""
    r = httpx.post(f"{fuzz_server.url}/v1/sandboxes", json={"metadata": {"test": "fuzz"}, "timeout": 0}, timeout=120)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.timeout(600)  # bounded by EXAMPLES: about a minute alone, several on a loaded host
def test_no_request_breaks_the_server(fuzz_server: ServerProcess, target: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30, "the schema lost its operations"
    failures: list[str] = []
    tried = 0
    for operation in operations:
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                aim(case, target)
                response = case.call(base_url=fuzz_server.url, timeout=60)
                request = f"{case.method} {response.request.url} body={str(case.body)[:300]!r}"
                assert response.status_code < 500, f"{request}\n-> {response.status_code} {response.text[:1000]}"
                if response.status_code >= 400:
                    content_type = response.headers.get("content-type", [""])[0]
                    envelope_error(response.status_code, content_type, response.content)

            tried += 1
            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing can be out of this schema (an operation with no parameters)
            except Exception as exc:
                # A flaky finding (a failure that did not happen again) carries what the replay
                # raised inside, and says in its own message which way it was flaky.
                inner = "; ".join(map(str, getattr(exc, "exceptions", ())))
                found = f"{exc} ({inner})" if inner else str(exc)
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}): {found}")
    assert tried > 50
    assert failures == [], "\n\n".join(failures)


def aim(case: Any, target: str) -> None:
    """Point ``case`` at the real sandbox if it may go there, and keep it on this host and bounded in time."""
    if (case.method.upper(), case.path) in AIMED:
        case.path_parameters["sandbox_id"] = target
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("image"), str) and not _local(body["image"]):
        body["image"] = "corral/fuzz-none-such"
    if case.path.endswith("/exec"):
        timeout = body.get("timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= EXEC_TIMEOUT:
            body["timeout"] = EXEC_TIMEOUT
        if body.get("background") is True:
            body["background"] = False  # a generated process left running could outlive the module's bound


def _local(name: str) -> bool:
    try:
        return reference.parse(name).is_local
    except (InvalidRequest, ValueError):
        return True  # refused as malformed (422) before any pull


# -- what the fuzzing found, each pinned --------------------------------------------


FILE_CALLS = [
    ("GET", "/files", {"params": {"path": "{p}"}}),
    ("PUT", "/files", {"params": {"path": "{p}"}, "content": b"x"}),
    ("GET", "/files/list", {"params": {"path": "{p}"}}),
    ("GET", "/files/stat", {"params": {"path": "{p}"}}),
    ("GET", "/files/exists", {"params": {"path": "{p}"}}),
    ("POST", "/files/mkdir", {"json": {"path": "{p}"}}),
    ("POST", "/files/chmod", {"json": {"path": "{p}", "mode": "644"}}),
    ("POST", "/files/move", {"json": {"source": "{p}", "destination": "/home/user/moved"}}),
    ("DELETE", "/files", {"params": {"path": "{p}"}}),
]


def _call(url: str, target: str, method: str, route: str, spec: dict[str, Any], path: str) -> httpx.Response:
    kwargs: dict[str, Any] = {k: v for k, v in spec.items() if k not in ("params", "json")}
    for key in ("params", "json"):
        if key in spec:
            kwargs[key] = {k: v.replace("{p}", path) if isinstance(v, str) else v for k, v in spec[key].items()}
    return httpx.request(method, f"{url}/v1/sandboxes/{target}{route}", timeout=30, **kwargs)


@pytest.mark.parametrize(("method", "route", "spec"), FILE_CALLS, ids=[f"{m} {r}" for m, r, _ in FILE_CALLS])
def test_a_path_with_a_nul_byte_is_refused(
    fuzz_server: ServerProcess, target: str, method: str, route: str, spec: dict[str, Any]
) -> None:
    # It was a 500 (the OS refuses such a path with a ValueError, which nothing caught).
    r = _call(fuzz_server.url, target, method, route, spec, "/home/user/a\0b")
    error = envelope_error(r.status_code, r.headers["content-type"], r.content)
    assert (r.status_code, error["code"]) == (422, "invalid_request"), error
    assert "NUL" in error["message"]


def test_an_unknown_sandbox_user_is_refused(fuzz_server: ServerProcess, target: str) -> None:
    # It was a 500: the agent answers an unknown user as envd does (401, "unauthenticated").
    url = f"{fuzz_server.url}/v1/sandboxes/{target}"
    answers = [
        httpx.get(f"{url}/files", params={"path": "/etc/hostname", "user": "nobody2"}),
        httpx.put(f"{url}/files", params={"path": "/tmp/x", "user": "nobody2"}, content=b"x"),
        httpx.get(f"{url}/files/stat", params={"path": "/etc", "user": "nobody2"}),
        httpx.post(f"{url}/files/mkdir", json={"path": "/tmp/d", "user": "nobody2"}),
        httpx.post(f"{url}/exec", json={"cmd": "true", "user": "nobody2"}, timeout=30),
    ]
    for r in answers:
        error = envelope_error(r.status_code, r.headers["content-type"], r.content)
        assert (r.status_code, error["code"]) == (422, "invalid_request"), (r.request.url, error)
        assert "nobody2" in error["message"]
