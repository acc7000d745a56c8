"""``corral serve``: the API server process."""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from pathlib import Path

from corral.config import Settings
from corral.errors import InvalidRequest

KEEP_ALIVE = 75
"""Seconds an idle client connection is kept open. Longer than any client keeps one idle
(httpx, the SDK's and the E2B SDK's client, closes them after 5): a server that closes
first can do it just as the client sends a request on it, which then fails (ReadError)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback without an API key."""
    if not is_loopback(settings.host) and not settings.api_key_digest():
        raise InvalidRequest(
            f"refusing to listen on {settings.host} without an API key: "
            "set CORRAL_API_KEY (or CORRAL_API_KEY_SHA256), or bind 127.0.0.1"
        )


MAX_OPEN_FILES = 1 << 20


def raise_open_files_limit() -> int:
    """Raise the server's soft limit of open files to its hard one (at most
    :data:`MAX_OPEN_FILES`); the limit now. Every command a client follows holds two
    connections (the client's, and the server's to the agent), and a login shell's soft
    limit is often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


CHATTY_LOGGERS = ("httpx", "alembic.runtime.plugins")
"""Loggers that say at INFO what only debugging needs: httpx a line for every call to an
agent (each command, file and health check), alembic one for each plugin it loads at start."""


def configure_logging(level: str) -> None:
    """The server's log at ``level``; :data:`CHATTY_LOGGERS` only at ``debug``."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)


def run_server(*, host: str | None = None, port: int | None = None, data_dir: Path | str | None = None) -> None:
    import uvicorn

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if data_dir is not None:
        overrides["data_dir"] = Path(data_dir)
    settings = Settings(**overrides)  # type: ignore[arg-type]
    check_bind(settings)
    if os.geteuid() != 0 and settings.runtime in ("runsc", "runc"):
        raise InvalidRequest("corral serve needs root: it makes network namespaces, mounts and sandboxes")
    configure_logging(settings.log_level)
    raise_open_files_limit()

    from corral.server.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE,
        # The standard library's event loop, not uvloop: the server runs host commands
        # (runsc, ip, nft...) all the time, and uvloop starts each with a fork() of the
        # whole server, 10-20 ms of CPU with the event loop stopped for a server of a few
        # hundred MiB, where the standard loop's vfork() takes under 1 ms. Network I/O
        # measured no slower (docs/benchmarks.md, "The server's event loop").
        loop="asyncio",
    )
