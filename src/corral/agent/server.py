"""Wires the services into one HTTP handler and runs it until SIGTERM.

As a sandbox's init (PID 1) it is never stopped by a signal: gVisor does not
shield init as Linux does, and root's ``kill 1`` or ``pkill -f python`` would
end the whole sandbox. corral stops sandboxes with SIGKILL from outside, which
nothing inside can catch (nor can root's ``kill -9 1``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket

from .connect import Router
from .files_http import FilesHandler
from .filesystem import FilesystemService
from .http import Request, Response, serve
from .limits import OomKiller, apply_pids_limit
from .log import log
from .process import ProcessManager
from .process_rpc import ProcessService
from .reaper import Reaper
from .users import UserDb
from .watch import WatchService

SHUTDOWN_GRACE = 3.0
# Signals whose default action ends a process and which nothing but a sender
# raises (faults such as SIGSEGV are left as they are): as init, the agent ignores them.
ENDING_SIGNALS = (
    *(getattr(signal, name) for name in (
        "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF",
        "SIGIO", "SIGXCPU", "SIGPWR", "SIGSTKFLT",
    ) if hasattr(signal, name)),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)  # fmt: skip


def make_handler(manager: ProcessManager, users: UserDb) -> tuple[Router, FilesHandler]:
    router = Router()
    ProcessService(manager, users).register(router)
    filesystem = FilesystemService(users)
    filesystem.register(router)
    WatchService(users, filesystem.entries).register(router)
    return router, FilesHandler(users)


async def run(fd: int, address: str, *, users: UserDb, base_env: dict[str, str]) -> int:
    """Serve on the listening socket ``fd`` until SIGTERM or SIGINT; the exit code."""
    loop = asyncio.get_running_loop()
    reaper = Reaper(loop)
    reaper.install()
    manager = ProcessManager(loop, reaper, base_env)
    apply_pids_limit(dict(os.environ))
    oom_killer = OomKiller.from_env(loop, dict(os.environ), manager.sessions)
    if oom_killer is not None:
        oom_killer.start()
    router, files = make_handler(manager, users)

    async def handle(request: Request, response: Response) -> None:
        path = request.path
        if path in router:
            await router.handle(request, response)
        elif path == "/files":
            await files.handle(request, response)
        elif path == "/health":
            await response.send(204)
        else:
            parts = path.split("/")
            error: dict[str, object] = {"code": 404, "message": f"{path} not found"}
            if len(parts) == 3 and "." in parts[1]:  # an RPC we do not serve
                error = {"code": "unimplemented", "message": f"{path} is not implemented"}
            await response.send(404, json.dumps(error).encode(), content_type="application/json")

    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    server = await serve(handle, sock)
    stopping: asyncio.Future[int] = loop.create_future()
    if os.getpid() == 1:
        for ending in ENDING_SIGNALS:
            loop.add_signal_handler(ending, _ignored, int(ending))
    else:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, _stop, stopping, int(stop_signal))
    log(
        "listening",
        address=address,
        pid=os.getpid(),
        default_user=users.default().name,
    )
    received = await stopping
    log("shutting down", signal=signal.Signals(received).name)
    server.close()
    if oom_killer is not None:
        oom_killer.stop()
    manager.signal_all(signal.SIGTERM)
    if not await manager.wait_idle(SHUTDOWN_GRACE):
        manager.signal_all(signal.SIGKILL)
    reaper.uninstall()
    return 0


def _ignored(signum: int) -> None:
    try:
        name = signal.Signals(signum).name
    except ValueError:  # a real-time signal
        name = f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    log("signal ignored: the sandbox's init ends only with the sandbox", signal=name)


def _stop(stopping: asyncio.Future[int], signum: int) -> None:
    if not stopping.done():
        stopping.set_result(signum)
