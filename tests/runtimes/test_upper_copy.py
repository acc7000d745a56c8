"""The upper dir copy: a small plain tree copied in process comes out as ``cp -a`` makes it; others go to cp."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest

from corral.runtimes import upper_copy
from corral.runtimes.upper_copy import copy_upper
from tests.hostcmds import Ran

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and trusted xattrs need root")


def make_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "home" / "user" / ".cache").mkdir(parents=True)
    secret = root / "home" / "user" / "secret"
    secret.write_bytes(os.urandom(70_000))
    secret.chmod(0o600)
    for path in (root / "home" / "user", root / "home" / "user" / ".cache", secret):
        os.chown(path, 1000, 1000)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    shared = root / "srv"
    shared.mkdir()
    shared.chmod(0o2775)
    tool = root / "usr" / "local" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    (root / "home" / "user" / "link").symlink_to("../../etc/hosts")
    os.chown(root / "home" / "user" / "link", 1000, 1000, follow_symlinks=False)
    (root / "dangling").symlink_to("/nowhere")
    os.setxattr(root / "srv", "trusted.overlay.opaque", b"y")  # an opaque directory of overlayfs
    os.setxattr(secret, "user.mark", b"kept")
    os.utime(secret, ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
    os.utime(root / "etc", ns=(1_200_000_000_000_000_000, 1_300_000_000_000_000_000))


def described(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything cp -a keeps, per entry (atime aside: reading a file changes it)."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        names = os.listxattr(path, follow_symlinks=False)
        xattrs = sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
        content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (
            stat.filemode(info.st_mode),
            info.st_uid,
            info.st_gid,
            info.st_mtime_ns,
            content,
            xattrs,
        )
    return out


def test_a_small_tree_is_copied_in_process_as_cp_a_copies_it(tmp_path: Path, ran: list[Ran]) -> None:
    source, by_cp, ours = tmp_path / "upper", tmp_path / "by-cp", tmp_path / "ours"
    for d in (source, by_cp, ours):
        d.mkdir()
    make_tree(source)
    os.utime(source, ns=(1_400_000_000_000_000_000, 1_500_000_000_000_000_000))
    subprocess.run(["cp", "-a", f"{source}/.", str(by_cp)], check=True)

    asyncio.run(copy_upper(source, ours))
    assert ran == []
    assert described(ours) == described(by_cp)


@pytest.mark.parametrize("odd", ["whiteout", "hard link", "too many", "too big"])
def test_other_trees_go_to_cp(tmp_path: Path, ran: list[Ran], odd: str) -> None:
    source, dest = tmp_path / "upper", tmp_path / "dest"
    source.mkdir()
    dest.mkdir()
    (source / "a").write_text("a")
    if odd == "whiteout":  # what overlayfs leaves for a deleted file
        os.mknod(source / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    elif odd == "hard link":
        os.link(source / "a", source / "b")
    elif odd == "too many":
        for i in range(upper_copy.SMALL_ENTRIES):
            (source / f"f{i}").touch()
    else:
        (source / "big").write_bytes(b"x" * (upper_copy.SMALL_BYTES + 1))
    asyncio.run(copy_upper(source, dest))
    assert [r.argv[:2] for r in ran] == [["cp", "-a"]]
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in source.iterdir())
    if odd == "whiteout":
        assert stat.S_ISCHR((dest / "gone").lstat().st_mode)
    if odd == "hard link":
        assert (dest / "a").stat().st_ino == (dest / "b").stat().st_ino
