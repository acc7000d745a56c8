"""Mounts made by system calls in the server's process: no ``mount`` or ``umount`` command on a create's way.

A command costs a process start (5-20 ms on two busy cores); the call it
makes costs well under one. Each function raises ``OSError`` naming what it
tried, as the command would have said.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from pathlib import Path

MS_BIND, MS_MOVE, MNT_DETACH = 0x1000, 0x2000, 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | Path, target: Path, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    if (
        _libc.mount(
            os.fsencode(source),
            os.fsencode(target),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        code = ctypes.get_errno()
        raise OSError(code, f"could not {what}: {os.strerror(code)}")


def mount_overlay(lower: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """``mount -t overlay`` of ``lower`` (topmost first) under ``upper`` on ``target``."""
    options = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    _mount("overlay", target, "overlay", 0, options, f"mount an overlay on {target}")


def bind_mount(source: Path, target: Path) -> None:
    """``mount --bind source target`` (``target`` must exist, a file for a file)."""
    _mount(source, target, None, MS_BIND, None, f"bind {source} on {target}")


def move_mount(source: Path, target: Path) -> None:
    """``mount --move source target``."""
    _mount(source, target, None, MS_MOVE, None, f"move the mount {source} to {target}")


def unmount(path: Path) -> None:
    """``umount path``, or ``umount -l path`` should it be busy; nothing if it is not a mount."""
    if _umount2(path, 0) is None:
        detach_mount(path)


def detach_mount(path: Path) -> bool:
    """``umount -l path``; whether there was a mount there to detach."""
    detached = _umount2(path, MNT_DETACH)
    if detached is None:  # a lazy unmount is never busy; should it be, say so rather than loop
        raise OSError(errno.EBUSY, f"could not unmount {path}: {os.strerror(errno.EBUSY)}")
    return detached


def detach_all(path: Path) -> int:
    """Detach every mount stacked on ``path`` (a bind mount made again and again); how many there were."""
    count = 0
    while detach_mount(path):
        count += 1
    return count


def _umount2(path: Path, flags: int) -> bool | None:
    """``True`` once unmounted, ``False`` if not a mount (nor there), ``None`` if busy.

    Asking the call is also the only sure test: ``os.path.ismount`` misses a
    bind mount within one file system.
    """
    if _libc.umount2(os.fsencode(path), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    if code == errno.EBUSY:
        return None
    raise OSError(code, f"could not unmount {path}: {os.strerror(code)}")


def mount_points() -> set[str]:
    """Every mount point of this mount namespace (``os.path.ismount`` misses a bind mount within one file system)."""
    with open("/proc/self/mountinfo") as info:
        return {line.split()[4].encode().decode("unicode_escape") for line in info}
