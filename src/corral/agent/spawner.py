"""The spawner: a small helper process, one per user, that starts that user's commands.

Inside gVisor a ``fork`` costs 20-60 ms however small the process, while a
``vfork``-style ``posix_spawn`` costs a few. The agent runs as root, and a
command must run as its caller (``user`` by default); Python can switch user
only between a ``fork`` and an ``exec``, so every command as ``user`` used to
pay a ``fork`` of the whole agent. A spawner already runs as the user: it
starts each command with ``posix_spawn`` and never forks.

The agent starts it (``python -c "...spawner import main; main()" FD UID GID
GROUPS``), as root, with one end of a ``SOCK_SEQPACKET`` socket pair as
``FD``; it drops to the user first thing and then serves requests on it:

- agent to spawner: ``marshal((seq, cmd, argv, env, cwd))`` with the
  command's stdin, stdout and stderr as ``SCM_RIGHTS`` file descriptors;
- spawner to agent: fixed-size records (:data:`RECORD`): ``READY``,
  ``SPAWNED seq pid``, ``FAILED seq errno where`` (``where``: 0 the program,
  1 the cwd) and ``EXITED pid wait-status`` for every child it reaps.

Each command gets its own session (``setsid``), the spawner's ignored signals
back to their defaults and an empty signal mask, as ``subprocess`` gives it.
The spawner exits when the agent closes its end. This module imports only
what the spawner needs: it is started fresh, and every import costs there.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import socket
import struct
import sys

RECORD = struct.Struct("<Bxxxiii")
READY, SPAWNED, FAILED, EXITED = range(4)
WHERE_PROGRAM, WHERE_CWD = 0, 1
MAX_REQUEST = 64 * 1024
"""The largest request (command, arguments, environment) sent to a spawner; larger ones start without it."""
STDIO_FDS = 3
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python, inherited across exec


def find_program(cmd: str, env: dict[str, str]) -> str:
    """``cmd``'s path, searched on the ``PATH`` of ``env`` (the command's) as ``subprocess`` does."""
    if "/" in cmd:
        return cmd
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", cmd)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(2, os.strerror(2), cmd)


def _spawn(cmd: str, argv: list[str], env: dict[str, str], cwd: str, stdio: list[int]) -> int:
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise _CwdError(exc.errno or 0) from None
    try:
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
        os.chdir("/")


class _CwdError(Exception):
    def __init__(self, errno: int) -> None:
        self.errno = errno


def _serve(sock: socket.socket) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    sock.send(RECORD.pack(READY, os.getpid(), 0, 0))
    fds_size = socket.CMSG_SPACE(STDIO_FDS * 4)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_read:
                os.read(wake_read, 512)
                _reap(sock)
                continue
            data, ancillary, _, _ = sock.recvmsg(MAX_REQUEST, fds_size, socket.MSG_CMSG_CLOEXEC)
            stdio = [
                received
                for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                for received in struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
            ]
            if not data:
                return  # the agent is gone
            try:
                seq, cmd, argv, env, cwd = marshal.loads(data)
                try:
                    pid = _spawn(cmd, argv, env, cwd, stdio)
                except _CwdError as exc:
                    sock.send(RECORD.pack(FAILED, seq, exc.errno, WHERE_CWD))
                except OSError as exc:
                    sock.send(RECORD.pack(FAILED, seq, exc.errno or 0, WHERE_PROGRAM))
                else:
                    sock.send(RECORD.pack(SPAWNED, seq, pid, 0))
            finally:
                for fd in stdio:
                    os.close(fd)
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(RECORD.pack(EXITED, pid, status, 0))


def main() -> None:
    """``FD UID GID GROUPS`` (comma-separated) from ``sys.argv``: drop to the user, then serve."""
    fd, uid, gid = (int(arg) for arg in sys.argv[1:4])
    groups = [int(g) for g in sys.argv[4].split(",") if g]
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    os.chdir("/")
    os.set_inheritable(fd, False)  # never passed on to a command
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        return  # the agent is gone
