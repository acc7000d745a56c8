"""The docs keep up with the code: every setting, error code and route is documented.

Like datasette's ``test_docs.py``: the code is the list, the docs are checked
against it, so adding a setting, a code or a route without documenting it
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import ERRORS_BY_CODE
from corral.server.app import create_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
API = (DOCS / "api.md").read_text()


def _documented_settings() -> set[str]:
    return set(re.findall(r"^\| `(CORRAL_[A-Z0-9_]+)` \|", CONFIGURATION, flags=re.MULTILINE))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"CORRAL_{name.upper()}" in _documented_settings(), f"add CORRAL_{name.upper()} to docs/configuration.md"


def test_no_documented_setting_is_stale() -> None:
    known = {f"CORRAL_{name.upper()}" for name in Settings.model_fields}
    assert _documented_settings() - known == set()


def test_documented_defaults_match() -> None:
    for name, field in Settings.model_fields.items():
        row = re.search(rf"^\| `CORRAL_{name.upper()}` \| (.+?) \|", CONFIGURATION, flags=re.MULTILINE)
        assert row is not None, name
        shown = row.group(1)
        default = field.get_default(call_default_factory=True)
        if default is None:
            assert shown == "—", (name, shown)
        else:
            assert shown == f"`{default}`", (name, shown, default)


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_every_error_code_is_documented(code: str) -> None:
    rows = (line.strip() for line in API.splitlines())
    row = next((line for line in rows if line.startswith("| ") and f"`{code}`" in line), None)
    assert row is not None, f"add `{code}` to the error table in docs/api.md"
    assert row.startswith(f"| {ERRORS_BY_CODE[code].status} |"), (code, row)


def _routes() -> list[tuple[str, str]]:
    app = create_app(Settings(data_dir=Path("/nonexistent")))
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            found.append((method.upper(), path.replace("{sandbox_id}", "{id}")))
    return sorted(found)


ROUTES = _routes()


def test_routes_are_found() -> None:
    assert ("POST", "/v1/sandboxes") in ROUTES and ("GET", "/health") in ROUTES
    assert len(ROUTES) >= 20


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_is_documented(method: str, path: str) -> None:
    # Either a table row (| METHOD | `path` |) or inline (`METHOD path`).
    in_table = re.search(rf"^\| {method} \| `{re.escape(path)}` \|", API, flags=re.MULTILINE)
    inline = f"`{method} {path}`" in API
    assert in_table or inline, f"document {method} {path} in docs/api.md"
