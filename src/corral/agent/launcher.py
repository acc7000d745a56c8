"""Starting commands as any user without forking the agent: ``posix_spawn`` from a thread of its own.

Inside gVisor a ``fork`` of the agent costs 20-60 ms (more while the sandbox
boots), a ``vfork``-style ``posix_spawn`` a few. ``subprocess`` can only use
``vfork`` when it switches no user, because Python switches users in the
child, between ``fork`` and ``exec``. Linux keeps credentials per thread,
though (glibc's ``setuid`` merely repeats the call in every thread), and a
``posix_spawn`` child starts with its calling thread's credentials. So the
agent starts its commands as other users from one *launcher thread* (those
as its own user need no switch: ``Popen`` starts them with a ``vfork`` from
the event loop, sparing the hand-over to this thread):

- when the thread starts it unshares its file-system context
  (``unshare(CLONE_FS)``): its working directory and umask are its own, so it
  can enter a command's cwd without moving the rest of the agent;
- for each command it switches its own groups, gid and uid with the raw
  system calls, keeping the saved ids at 0 so that it can switch back; enters
  the cwd as that user (a directory the user may not enter fails as it would
  for them); finds the program on the command's ``PATH`` as that user; and
  ``posix_spawn``s it in a session of its own, with an empty signal mask and
  the signals Python ignores back at their defaults, as ``subprocess`` does;
- the ``exec`` leaves the child with no capabilities (its real and effective
  ids are the user's), and the thread switches back to root and to ``/``. If
  it ever could not, the agent exits: a thread stuck as a user would start
  the next command with that user's rights.

While its ids are the user's, that user's processes may signal this thread
(``tgkill``), and a ``SIGSTOP`` or ``SIGKILL`` there stops the whole agent:
docs/security.md records the gap.

The children are the agent's own, reaped by :class:`~corral.agent.reaper.Reaper`.
The event loop waits for the thread while it starts one (a few milliseconds,
as it does for ``Popen``), so a child cannot be reaped before it is watched.

Without ``ctypes`` (an interpreter built without it), on an unknown machine
or where ``unshare`` is refused, :attr:`Launcher.available` is false and the
caller starts commands with ``subprocess`` instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .log import log

Credentials = tuple[int, int, tuple[int, ...]]
"""``(uid, gid, groups)`` to start a command with."""

_CLONE_FS = 0x200
_SYSCALLS = {  # from the kernel's syscall tables
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119, "unshare": 272},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149, "unshare": 97},
}
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python, inherited across exec


class CwdError(OSError):
    """The command's working directory could not be entered (as its user): nothing ran."""


def find_program(cmd: str, env: dict[str, str]) -> str:
    """``cmd``'s path, searched on the ``PATH`` of ``env`` (the command's) as ``subprocess`` does."""
    if "/" in cmd:
        return cmd
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", cmd)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(2, os.strerror(2), cmd)


class _Syscalls:
    """The raw, per-thread ``setgroups``, ``setresgid``, ``setresuid`` and ``unshare``."""

    def __init__(self) -> None:
        import ctypes  # here, so that an interpreter without it still runs the agent

        self._ctypes: Any = ctypes
        self._numbers = _SYSCALLS[os.uname().machine]
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall

    def __call__(self, name: str, *args: object) -> None:
        if self._syscall(self._numbers[name], *args) != 0:
            number = self._ctypes.get_errno()
            raise OSError(number, f"{name}: {os.strerror(number)}")

    def set_ids(self, uid: int, gid: int, groups: tuple[int, ...]) -> None:
        """This thread's groups, then gid, then uid (the order in which each is still allowed)."""
        array = (self._ctypes.c_uint * max(len(groups), 1))(*groups)
        self("setgroups", len(groups), array)
        self("setresgid", gid, gid, 0)
        self("setresuid", uid, uid, 0)

    def restore(self, root: Credentials) -> None:
        """Back to ``root``'s ids: uid first, which gives back the right to set the rest."""
        uid, gid, groups = root
        self("setresuid", uid, uid, uid)
        array = (self._ctypes.c_uint * max(len(groups), 1))(*groups)
        self("setresgid", gid, gid, gid)
        self("setgroups", len(groups), array)


class _Worker:
    """One daemon thread that runs one call at a time for its caller, who waits (no executor: fewer imports)."""

    def __init__(self, name: str) -> None:
        self._job: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self._outcome: tuple[bool, Any] = (True, None)
        self._ready = threading.Lock()
        self._done = threading.Lock()
        self._ready.acquire()
        self._done.acquire()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` run in the thread; its result, or its exception raised here."""
        self._job = (function, args)
        self._ready.release()
        self._done.acquire()
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while True:
            self._ready.acquire()
            assert self._job is not None
            function, args = self._job
            self._job = None
            try:
                self._outcome = (True, function(*args))
            except BaseException as exc:  # handed to the caller
                self._outcome = (False, exc)
            self._done.release()


class Launcher:
    """Starts commands from the launcher thread, as the agent or as another user. Not thread-safe: one caller."""

    def __init__(self) -> None:
        self._root: Credentials = (os.getuid(), os.getgid(), tuple(os.getgroups()))
        self._syscalls: _Syscalls | None = None
        self.available = False
        """Whether :meth:`spawn` may be called (else use ``subprocess``)."""
        try:
            self._syscalls = _Syscalls()
        except (ImportError, OSError, KeyError, AttributeError) as exc:
            log("launcher unavailable", reason=str(exc) or type(exc).__name__)
            return
        self._worker = _Worker("corral-launcher")
        try:
            self._worker.call(self._own_fs_context)
        except OSError as exc:
            log("launcher unavailable", reason=str(exc))
            return
        self.available = True

    def _own_fs_context(self) -> None:
        assert self._syscalls is not None
        self._syscalls("unshare", _CLONE_FS)
        os.chdir("/")

    def spawn(
        self,
        cmd: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stdio: tuple[int, int, int],
        *,
        credentials: Credentials | None,
    ) -> int:
        """Start ``cmd`` (found on ``env``'s ``PATH``) with ``stdio`` as fds 0-2; its pid.

        ``credentials`` are the user to start it as (``None``: the agent's
        own). Raises :class:`CwdError` if ``cwd`` cannot be entered, else the
        ``OSError`` of finding or starting the program. Blocks until the
        child has been started (its ``exec`` done or failed).
        """
        pid: int = self._worker.call(self._spawn, cmd, argv, env, cwd, stdio, credentials)
        return pid

    def _spawn(
        self,
        cmd: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stdio: tuple[int, int, int],
        credentials: Credentials | None,
    ) -> int:
        syscalls = self._syscalls
        assert syscalls is not None
        if credentials is not None:
            syscalls.set_ids(*credentials)
        try:
            try:
                os.chdir(cwd)
            except OSError as exc:
                raise CwdError(exc.errno or 0, exc.strerror, cwd) from None
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)]
            return os.posix_spawn(
                find_program(cmd, env),
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        finally:
            try:
                if credentials is not None:
                    syscalls.restore(self._root)
                os.chdir("/")
            except OSError as exc:
                log("launcher cannot switch back; exiting", error=str(exc))
                sys.stderr.flush()
                os._exit(70)
