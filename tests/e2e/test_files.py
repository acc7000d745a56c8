"""Files through the API, in a real sandbox: round trips, big streams, listing, confinement."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from corral import Sandbox
from corral.errors import CorralError, FileNotFound, InvalidRequest, PermissionDenied


def test_write_read_text_and_bytes(sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/t.txt", "héllo")
    assert sandbox.files.read("/home/user/t.txt") == "héllo"
    blob = bytes(range(256)) * 10
    sandbox.files.write("/home/user/deep/er/b.bin", blob)  # parents are created
    assert sandbox.files.read("/home/user/deep/er/b.bin", format="bytes") == blob
    # written as the default user, visible to commands
    assert sandbox.commands.run("stat -c %U /home/user/t.txt; cat /home/user/t.txt").stdout == "user\nhéllo"


def test_large_file_streams_both_ways(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with src.open("rb") as f:
        sandbox.files.write("/tmp/big.bin", f)
    assert sandbox.commands.run("sha256sum /tmp/big.bin | cut -d' ' -f1").stdout.strip() == digest
    h = hashlib.sha256()
    for chunk in sandbox.files.read("/tmp/big.bin", format="stream"):
        h.update(chunk)
    assert h.hexdigest() == digest


def test_list_stat_exists_mkdir_move_remove_chmod(sandbox: Sandbox) -> None:
    f = sandbox.files
    f.make_dir("/home/user/proj/src")
    f.write("/home/user/proj/src/main.py", "print(1)\n")
    f.write("/home/user/proj/README", "x")
    top = {e.name: e for e in f.list("/home/user/proj")}
    assert set(top) == {"src", "README"}
    assert top["src"].type == "dir" and top["README"].type == "file" and top["README"].size == 1
    deep = {e.path for e in f.list("/home/user/proj", depth=2)}
    assert "/home/user/proj/src/main.py" in deep
    assert f.exists("/home/user/proj/README") and not f.exists("/home/user/proj/nope")
    info = f.stat("/home/user/proj/src/main.py")
    assert info.owner == "user" and info.size == 9
    moved = f.rename("/home/user/proj/README", "/home/user/proj/README.md")
    assert moved.path == "/home/user/proj/README.md"
    chmodded = f.chmod("/home/user/proj/src/main.py", "750")
    assert chmodded.mode & 0o777 == 0o750
    assert sandbox.commands.run("stat -c %a /home/user/proj/src/main.py").stdout == "750\n"
    with pytest.raises(Exception) as info_exc:
        f.remove("/home/user/proj/src")  # not empty, not recursive
    assert getattr(info_exc.value, "code", "") in ("conflict", "not_a_directory", "invalid_request")
    f.remove("/home/user/proj", recursive=True)
    assert not f.exists("/home/user/proj")
    with pytest.raises(FileNotFound):
        f.read("/home/user/proj/src/main.py")


def test_paths_cannot_reach_the_host(sandbox: Sandbox, server, tmp_path: Path) -> None:
    marker = tmp_path / f"host-secret-{secrets.token_hex(4)}"
    marker.write_text("host only")
    db = server.data_dir / "corral.db"
    for path in (str(marker), f"/home/user/../../..{marker}", str(db)):
        with pytest.raises(FileNotFound):
            sandbox.files.read(path)
    # a symlink inside the sandbox pointing at a host path resolves inside the sandbox
    sandbox.commands.run(f"ln -s {marker} /home/user/link; ln -s / /home/user/root")
    with pytest.raises(FileNotFound):
        sandbox.files.read("/home/user/link")
    # "/" through a symlink is the sandbox's root: its /etc/hosts names its own address, not the host's
    assert f"{sandbox.get_info().address}\tcorral" in sandbox.files.read("/home/user/root/etc/hosts")
    # writing through a symlink stays inside too
    sandbox.files.write("/home/user/root/tmp/through-link", "in")
    assert sandbox.commands.run("cat /tmp/through-link").stdout == "in"
    assert not Path("/tmp/through-link").exists() or Path("/tmp/through-link").read_text() != "in"


def test_what_the_sandbox_refuses_is_a_clear_error_and_no_hang(sandbox: Sandbox) -> None:
    """The kernel's refusals are 403s; what is no file to read is a 422 at once, not a hung request."""
    with pytest.raises(PermissionDenied, match="Operation not permitted"):
        sandbox.files.write("/proc/sys/kernel/hostname", "x", user="root")
    with pytest.raises(PermissionDenied, match="Read-only file system"):
        sandbox.files.write("/.corral/x", "x", user="root")  # the agent's own bundle is mounted read-only
    sandbox.commands.run("mkfifo /tmp/fifo; ln -s /tmp/loop2 /tmp/loop1; ln -s /tmp/loop1 /tmp/loop2")
    for _ in range(8):  # more than the agent's worker threads
        with pytest.raises(InvalidRequest, match="named pipe"):
            sandbox.files.read("/tmp/fifo")
    with pytest.raises(InvalidRequest, match="symbolic links"):
        sandbox.files.read("/tmp/loop1")
    with pytest.raises(InvalidRequest, match="symbolic links"):
        sandbox.files.list("/tmp/loop1")
    with pytest.raises(CorralError, match="error reading file '/proc/self/mem'"):  # was a bare "[Errno 5]"
        sandbox.files.read("/proc/self/mem")
    assert sandbox.files.read("/etc/hostname")  # the agent still serves


def test_names_that_are_not_utf8_are_listed(sandbox: Sandbox) -> None:
    """Each byte that is not UTF-8 shows as U+FFFD (the list was a 500: no JSON answer can carry it)."""
    sandbox.commands.run("mkdir /tmp/names && cd /tmp/names && touch \"$(printf 'bad\\377\\376name')\" fine")
    names = sorted(entry.name for entry in sandbox.files.list("/tmp/names"))
    assert names == ["bad\ufffd\ufffdname", "fine"]
    assert sandbox.files.list("/tmp/names", depth=2)  # every way to list
