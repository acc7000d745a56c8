"""Entry point: listen first, then import the rest and serve until SIGTERM.

The listening socket is bound with the bare ``_socket`` module before asyncio
and friends are imported, so a client can connect (and queue in the backlog)
from the first milliseconds of the agent's life.

As PID 1 the agent reaps every zombie (:mod:`corral.agent.reaper`) and, on
SIGTERM or SIGINT, forwards SIGTERM to the process groups it started, waits
briefly, SIGKILLs what is left and exits.

Settings (argument, else environment variable, else default):

- ``--host`` / ``CORRAL_AGENT_HOST`` (``0.0.0.0``) and ``--port`` /
  ``CORRAL_AGENT_PORT`` (``49983``, envd's): where to listen;
- ``--user`` / ``CORRAL_AGENT_USER``: the default user (else ``user`` if the
  image has it, else ``root``);
- ``CORRAL_AGENT_WORKDIR``: where commands start when they name no cwd (the
  image's WORKDIR; default: the user's home);
- ``CORRAL_AGENT_ETC`` (``/etc``): where ``passwd`` and ``group`` are read;
- ``CORRAL_AGENT_MEMORY_LIMIT_MB`` and ``CORRAL_AGENT_PIDS_LIMIT``: limits to enforce
  (:mod:`corral.agent.limits`).

``CORRAL_AGENT_*`` variables are not passed on to the processes the agent
starts; the rest of its environment is their base environment.
"""

from __future__ import annotations

import _socket
import os
import sys
from typing import TYPE_CHECKING

from . import DEFAULT_PORT

if TYPE_CHECKING:
    import asyncio

USAGE = """usage: python -m corral.agent [--host HOST] [--port PORT] [--user NAME]

  --host HOST   address to listen on (default 0.0.0.0, env CORRAL_AGENT_HOST)
  --port PORT   port to listen on (default 49983, env CORRAL_AGENT_PORT)
  --user NAME   default user (default: "user" if the image has it, else root;
                env CORRAL_AGENT_USER)
"""


class Options:
    def __init__(self) -> None:
        self.host = os.environ.get("CORRAL_AGENT_HOST", "0.0.0.0")
        self.port = int(os.environ.get("CORRAL_AGENT_PORT", DEFAULT_PORT))
        self.user: str | None = os.environ.get("CORRAL_AGENT_USER") or None
        # Where passwd and group are read; another directory is for tests.
        self.etc = os.environ.get("CORRAL_AGENT_ETC", "/etc")


def parse_args(argv: list[str]) -> Options:
    """Parse ``--host``, ``--port`` and ``--user`` (``--name value`` or ``--name=value``)."""
    options = Options()
    items = list(argv)
    while items:
        item = items.pop(0)
        if item in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        name, sep, value = item.partition("=")
        if name not in ("--host", "--port", "--user"):
            sys.stderr.write(f"unknown argument {item!r}\n{USAGE}")
            raise SystemExit(2)
        if not sep:
            if not items:
                sys.stderr.write(f"{name} needs a value\n")
                raise SystemExit(2)
            value = items.pop(0)
        if name == "--host":
            options.host = value
        elif name == "--port":
            try:
                options.port = int(value)
            except ValueError:
                sys.stderr.write(f"invalid port {value!r}\n")
                raise SystemExit(2) from None
        else:
            options.user = value or None
    return options


def listen(host: str, port: int) -> int:
    """Bind and listen; return the socket's file descriptor."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def base_environment() -> dict[str, str]:
    """The environment every process starts from: the agent's, minus its own settings."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("CORRAL_AGENT_"):
            del env[key]
    python_home = env.get("PYTHONHOME")
    if python_home and os.path.realpath(python_home) == os.path.realpath(sys.prefix):
        del env["PYTHONHOME"]  # the bundle's interpreter, not the image's
    for key in ("HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "SHLVL", "_"):
        env.pop(key, None)  # per user or per shell
    return env


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        fd = listen(options.host, options.port)
    except OSError as exc:
        sys.stderr.write(f"corral-agent: cannot listen on {options.host}:{options.port}: {exc}\n")
        return 1

    import asyncio

    from .server import run
    from .users import UserDb

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(
            run(
                fd,
                f"{options.host}:{options.port}",
                users=UserDb(options.etc, default_user=options.user),
                base_env=base_environment(),
            )
        )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop that waits with ``poll(2)``, which keeps no state in the kernel between calls.

    An epoll set is kernel state, and gVisor (up to at least its 2026 releases)
    can save it inconsistently when a checkpoint lands while its files change:
    a restored epoll set may report, forever, a socket the agent has since
    closed (the loop then spins at full CPU and never serves again), or never
    report a socket that is ready. A snapshot taken while uploads ran gave such
    copies. ``poll`` asks each file afresh on every call; the agent waits on few
    files, so it costs nothing measurable.
    """
    import asyncio
    import selectors

    return asyncio.SelectorEventLoop(selectors.PollSelector())
