"""The hostile-workload report: every test marked ``hostile`` and how it ended, as a table in docs/security.md.

Mark a test ``@pytest.mark.hostile("category", "what the program inside tries")``.
With ``CORRAL_HOSTILE_REPORT=docs/security.md`` set (``make hostile``), the run
rewrites the part of that file between the ``hostile:begin`` and
``hostile:end`` comments with one row per case: the table is made by the
suite itself, never typed by hand. Works under xdist: workers attach the case
to their reports, the controller writes the table.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import pytest

BEGIN, END = "<!-- hostile:begin -->", "<!-- hostile:end -->"
_results: dict[str, dict[str, str]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    mark = item.get_closest_marker("hostile")
    if mark is not None:
        category, attack = mark.args
        report.user_properties.append(("hostile", f"{category}\t{attack}"))  # type: ignore[attr-defined]
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    case = dict(report.user_properties).get("hostile")
    if case is None:
        return
    category, attack = str(case).split("\t", 1)
    row = _results.setdefault(report.nodeid, {"category": category, "attack": attack, "result": "passed"})
    if report.outcome == "failed":
        row["result"] = "FAILED" if report.when == "call" else f"error in {report.when}"
    elif report.outcome == "skipped" and row["result"] == "passed":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        row["result"] = f"skipped: {str(reason).removeprefix('Skipped: ')}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("CORRAL_HOSTILE_REPORT")
    if not target or not _results or hasattr(session.config, "workerinput"):
        return
    path = Path(target)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{path} has no {BEGIN} ... {END} section to fill")
    rows = sorted(_results.values(), key=lambda r: (r["category"], r["attack"]))
    passed = sum(r["result"] == "passed" for r in rows)
    lines = [
        BEGIN,
        f"{passed} of {len(rows)} hostile cases held, run {time.strftime('%Y-%m-%d')} on "
        f"{platform.system()} {platform.release()} by `make hostile` (this table is written by the suite).",
        "",
        "| # | area | what the program in the sandbox tries | result |",
        "|---|---|---|---|",
        *(f"| {i} | {r['category']} | {r['attack']} | {r['result']} |" for i, r in enumerate(rows, 1)),
        END,
    ]
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])
