"""The official e2b SDK drives a real corral sandbox's agent (envd protocol)."""

from __future__ import annotations

import pytest

from corral import Sandbox


def test_e2b_sdk_against_a_sandbox_agent(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    e2b = pytest.importorskip("e2b")
    address = sandbox.get_info().address
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"http://{address}:49983")
    monkeypatch.setenv("E2B_API_KEY", "unused-in-debug-mode")
    sbx = e2b.Sandbox.create()
    result = sbx.commands.run("python3 -c 'print(6*7)'")
    assert result.stdout == "42\n" and result.exit_code == 0
    sbx.files.write("/home/user/from-e2b.txt", "written by e2b")
    assert sbx.files.read("/home/user/from-e2b.txt") == "written by e2b"
    # the same file, seen through corral's own API
    assert sandbox.files.read("/home/user/from-e2b.txt") == "written by e2b"
    with pytest.raises(e2b.CommandExitException):
        sbx.commands.run("exit 4")
