"""What the host's kernel knows of its TCP connections (``/proc/net/tcp``)."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

PROC_NET_TCP = Path("/proc/net/tcp")
CLOSING_STATES = {"04", "05", "0B"}
"""FIN_WAIT1, FIN_WAIT2, CLOSING: this side closed, the other has not yet."""


def _endpoint(address: str, port: int) -> str:
    """An IPv4 endpoint as the kernel prints it: the address as a native-endian word, then the port, in hex."""
    (word,) = struct.unpack("=I", socket.inet_aton(address))
    return f"{word:08X}:{port:04X}"


def half_closed_to(address: str, port: int, table: str | None = None) -> int:
    """How many connections to ``address:port`` this side closed while the other side still holds them open."""
    remote = _endpoint(address, port)
    text = PROC_NET_TCP.read_text() if table is None else table
    count = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[2] == remote and fields[3] in CLOSING_STATES:
            count += 1
    return count


async def closed_by_peer(address: str, port: int, *, timeout: float, poll: float = 0.005) -> bool:
    """Wait until the peer at ``address:port`` has closed its side of every connection we closed.

    Answers whether it did within ``timeout`` seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while half_closed_to(address, port):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
