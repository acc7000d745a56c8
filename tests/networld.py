"""A small world of test hosts in a network namespace this test run creates.

The namespace is joined to the host by a veth pair on 198.51.100.0/30, and
holds, all on its own interface:

- ``PUBLIC`` and ``PUBLIC_OTHER`` (203.0.113.x): "the internet";
- ``LAN``, ``LAN_172``, ``CGNAT`` (10.254.0.10, 172.31.250.10, 100.64.0.10): private hosts;
- ``METADATA`` (169.254.169.254): a cloud metadata service;
- ``DNS`` (203.0.113.53): a resolver that knows ``NAMES``.

Every host answers HTTP on port 80 with its own address. The host's routes
to these addresses point into the namespace for as long as the world exists,
so no test packet for them ever leaves this machine.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

NETNS = f"corral-test-world-{os.getpid()}"
HOST_IFACE = f"cwh{os.getpid() % 100000}"
HOST_LINK, WORLD_LINK = "198.51.100.1", "198.51.100.2"
PUBLIC, PUBLIC_OTHER, DNS = "203.0.113.10", "203.0.113.11", "203.0.113.53"
# Private hosts apart from every subnet corral's tests and benches give sandboxes (10.60-10.253).
LAN, LAN_172, CGNAT, METADATA = "10.254.0.10", "172.31.250.10", "100.64.0.10", "169.254.169.254"
ROUTES = ("203.0.113.0/24", "10.254.0.0/24", "172.31.250.0/24", "100.64.0.0/24", f"{METADATA}/32")
NAMES = {"public.test": PUBLIC, "other.test": PUBLIC_OTHER, "lan.test": LAN, "www.allowed.test": PUBLIC_OTHER}

_SERVE = Path(__file__).with_name("networld_serve.py")


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@contextlib.contextmanager
def world() -> Iterator[None]:
    """Make the namespace, its addresses, services and the host's routes; undo all of it after."""
    _teardown()
    _ip("netns", "add", NETNS)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", HOST_IFACE, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _ip("addr", "add", f"{HOST_LINK}/30", "dev", HOST_IFACE)
        _ip("link", "set", HOST_IFACE, "up")
        for cmd in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{WORLD_LINK}/30", "dev", "eth0"],
            *(
                ["addr", "add", f"{a}/32", "dev", "eth0"]
                for a in (PUBLIC, PUBLIC_OTHER, DNS, LAN, LAN_172, CGNAT, METADATA)
            ),
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", HOST_LINK],
        ):
            _ip("-n", NETNS, *cmd)
        for route in ROUTES:
            _ip("route", "replace", route, "via", WORLD_LINK, "dev", HOST_IFACE)
        names = ",".join(f"{k}={v}" for k, v in NAMES.items())
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, str(_SERVE), DNS, names],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until_serving()
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        _teardown()


def _wait_until_serving(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{PUBLIC}/", timeout=1, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("the test world's servers did not come up")


def _teardown() -> None:
    for route in ROUTES:
        _ip("route", "del", route, "via", WORLD_LINK, check=False)
    _ip("link", "del", HOST_IFACE, check=False)
    _ip("netns", "del", NETNS, check=False)
