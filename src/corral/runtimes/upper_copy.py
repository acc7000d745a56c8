"""Copying a saved upper dir (a sandbox's changes over its image) into a new sandbox's disk.

``cp -a --reflink=auto`` copies any tree, whiteouts and hard links included.
But a boot snapshot's upper dir is a handful of small files, and starting
``cp`` costs 15-20 ms of a create's way on two busy cores: such a tree is
copied here, in the server's process, keeping what ``cp -a`` keeps (contents,
mode, owner, times, extended attributes). A tree that is not small, or holds
anything but directories, regular files with one link, and symlinks, goes to
``cp``. A hibernated sandbox's checkpoint image, taken into a snapshot, is
linked rather than copied (:func:`link_or_copy_tree`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from pathlib import Path

from corral import hostcmd

SMALL_ENTRIES = 256
SMALL_BYTES = 4 << 20


async def copy_upper(source: Path, dest: Path) -> None:
    """Copy what is in ``source`` into the directory ``dest``, as ``cp -a source/. dest`` does."""
    if not await asyncio.to_thread(_copy_if_small, source, dest):
        await hostcmd.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(dest)], timeout=3600)


def _copy_if_small(source: Path, dest: Path) -> bool:
    entries = _small_tree(source)
    if entries is None:
        return False
    for relative, info in entries:
        src, dst = source / relative, dest / relative
        if stat.S_ISDIR(info.st_mode):
            dst.mkdir()
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
            _keep_attributes(src, dst, info)
        else:
            shutil.copyfile(src, dst, follow_symlinks=False)
            _keep_attributes(src, dst, info)
    # Directories last, deepest first: what was made in them changed their times.
    for relative, info in reversed([("", source.lstat()), *entries]):
        if stat.S_ISDIR(info.st_mode):
            _keep_attributes(source / relative, dest / relative, info)
    return True


def _small_tree(source: Path) -> list[tuple[str, os.stat_result]] | None:
    """Every entry under ``source`` (parents before their children) if the tree is small and plain, else None."""
    found: list[tuple[str, os.stat_result]] = []
    size = 0
    pending = [""]
    while pending:
        directory = pending.pop()
        with os.scandir(source / directory) as listing:
            for entry in listing:
                info = entry.stat(follow_symlinks=False)
                relative = os.path.join(directory, entry.name)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(relative)
                elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    size += info.st_size
                elif not stat.S_ISLNK(info.st_mode):
                    return None  # a whiteout, a hard link, a device, a FIFO, a socket: cp's job
                found.append((relative, info))
                if len(found) > SMALL_ENTRIES or size > SMALL_BYTES:
                    return None
    return found


def _keep_attributes(src: Path, dst: Path, info: os.stat_result) -> None:
    link = stat.S_ISLNK(info.st_mode)
    os.chown(dst, info.st_uid, info.st_gid, follow_symlinks=False)
    if not link:  # after chown, which clears set-user-ID bits
        os.chmod(dst, stat.S_IMODE(info.st_mode))
    for name in os.listxattr(src, follow_symlinks=False):
        with contextlib.suppress(OSError):  # as cp -a: an attribute the target cannot hold is let go
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def link_or_copy_tree(source: Path, dest: Path) -> None:
    """``dest`` as a copy of the tree ``source``, its files hard-linked where they can be.

    For checkpoint images, which nothing changes once written: a link costs
    nothing whatever the image's size, and each side's removal leaves the other's.
    """

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy)
