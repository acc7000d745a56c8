"""The README's example, verbatim, against a real server and gVisor sandbox."""

from __future__ import annotations

from corral import Sandbox


def test_readme_example(corral_url: str) -> None:
    with Sandbox.create(metadata={"test": "readme"}) as sbx:
        r = sbx.commands.run("python3 -c 'print(6*7)'")
        sbx.files.write("/home/user/a.txt", "hi")
        assert r.stdout == "42\n"
        assert r.exit_code == 0
        assert sbx.files.read("/home/user/a.txt") == "hi"
        sandbox_id = sbx.id
    assert all(s.id != sandbox_id for s in Sandbox.list())


def test_sandbox_is_gvisor(sandbox: Sandbox) -> None:
    # gVisor's kernel announces itself in dmesg; a plain container would show the host's.
    out = sandbox.commands.run("dmesg 2>/dev/null | head -1; uname -r", user="root").stdout
    assert "gVisor" in out or "Starting gVisor" in out
