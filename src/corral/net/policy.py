"""What a sandbox may reach: its egress policy, validated, and the address ranges it speaks of.

A policy is data (stored with the sandbox, sent over the API); the firewall
(:mod:`corral.net.firewall`) turns it into nftables rules on the host side of
the sandbox's link and the DNS forwarder (:mod:`corral.net.dns`) answers
names by it. Nothing inside the sandbox can change either.

Modes:

- ``none``: nothing leaves the sandbox, DNS included.
- ``allowlist``: only what ``allow_cidrs``, ``allow_domains`` and
  ``allow_host`` name (and, with ``allow_lan``, the private ranges).
- ``public_only`` (the default): the public internet, plus what the
  allow-lists name. Never by default: the host, other sandboxes, private
  ranges (RFC 1918, CGNAT), link-local (the metadata service at
  169.254.169.254) and multicast.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from corral.errors import InvalidRequest
from corral.runtimes.base import AGENT_PORT

Mode = Literal["none", "allowlist", "public_only"]
MODES: tuple[Mode, ...] = ("none", "allowlist", "public_only")
Previews = Literal["private", "public"]

PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
"""The LAN: RFC 1918 and carrier-grade NAT. Opened by ``allow_lan``."""

NEVER_PUBLIC = (
    "0.0.0.0/8",  # "this network"
    "127.0.0.0/8",  # loopback (the host's, reached through the link)
    "169.254.0.0/16",  # link-local, the cloud metadata service among it
    "192.0.0.0/24",  # IETF protocol assignments
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
)
"""Not the public internet, and not the LAN either: open only by naming them in ``allow_cidrs``."""

MAX_ENTRIES = 256
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    mode: Mode = "public_only"
    allow_cidrs: tuple[str, ...] = ()
    """IPv4 networks (or single addresses) that are reachable whatever the mode says."""
    allow_domains: tuple[str, ...] = ()
    """Names (``pypi.org``) or wildcards (``*.github.com``: every name under it) the sandbox may resolve and reach."""
    allow_host: tuple[int, ...] = ()
    """TCP ports of the host the sandbox may reach, at its gateway address only."""
    allow_lan: bool = False
    """Whether private ranges (RFC 1918, CGNAT) are reachable. Other sandboxes never are."""
    previews: Previews = "private"
    """``private``: preview URLs need the sandbox's access token; ``public``: anyone who can reach the proxy."""

    @property
    def dns(self) -> bool:
        """Whether the sandbox may resolve names at all."""
        return self.mode != "none"

    def allows_name(self, name: str) -> bool:
        """Whether a DNS question for ``name`` is answered (``public_only`` answers every name)."""
        return self.mode == "public_only" or self.names_pinned(name)

    def names_pinned(self, name: str) -> bool:
        """Whether ``name`` is in ``allow_domains``: its addresses become reachable once resolved."""
        name = name.rstrip(".").lower()
        for entry in self.allow_domains:
            if entry.startswith("*."):
                if name.endswith(entry[1:]):
                    return True
            elif name == entry:
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EgressPolicy:
        """A policy from what a request or the store holds; every entry is checked and normalized."""
        if not data:
            return cls()
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise _bad(f"unknown network field(s): {', '.join(sorted(unknown))}", "network")
        mode = data.get("mode", "public_only")
        if mode not in MODES:
            raise _bad(f"network mode must be one of {', '.join(MODES)}, got {mode!r}", "network.mode", mode)
        previews = data.get("previews", "private")
        if previews not in ("private", "public"):
            raise _bad(f"previews must be 'private' or 'public', got {previews!r}", "network.previews", previews)
        allow_lan = data.get("allow_lan", False)
        if not isinstance(allow_lan, bool):
            raise _bad("allow_lan must be true or false", "network.allow_lan", allow_lan)
        policy = cls(
            mode=mode,
            allow_cidrs=tuple(dict.fromkeys(parse_cidr(c) for c in _entries(data, "allow_cidrs"))),
            allow_domains=tuple(dict.fromkeys(parse_domain(d) for d in _entries(data, "allow_domains"))),
            allow_host=tuple(sorted({parse_port(p) for p in _entries(data, "allow_host")})),
            allow_lan=allow_lan,
            previews=previews,
        )
        if mode == "none" and (policy.allow_cidrs or policy.allow_domains or policy.allow_host or allow_lan):
            raise _bad("mode 'none' lets nothing out, so it takes no allow-lists; use mode 'allowlist'", "network.mode")
        return policy


def parse_cidr(value: object) -> str:
    """``10.1.2.0/24`` or a single address, normalized (host bits cleared); IPv4 only."""
    try:
        net = ipaddress.ip_network(str(value).strip(), strict=False) if isinstance(value, str) else None
    except ValueError:
        net = None
    if net is None:
        raise _bad(f"allow_cidrs: {value!r} is not an IPv4 network such as 10.1.0.0/16", "network.allow_cidrs", value)
    if net.version != 4:
        raise _bad(f"allow_cidrs: {value!r} is IPv6; sandboxes have IPv4 only", "network.allow_cidrs", value)
    return str(net)


def parse_domain(value: object) -> str:
    """``example.com`` or ``*.example.com`` (every name under it), lowercased; IDNs as punycode."""
    name = value.strip().rstrip(".").lower() if isinstance(value, str) else ""
    labels = name.removeprefix("*.").split(".")
    ok = 0 < len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)
    if not ok:
        raise _bad(
            f"allow_domains: {value!r} is not a domain name such as pypi.org or *.github.com",
            "network.allow_domains",
            value,
        )
    return name


def parse_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(f"allow_host: {value!r} is not a TCP port (1-65535)", "network.allow_host", value)
    return value


@dataclass(frozen=True, slots=True)
class Published:
    """A host port on the server's address that forwards to a port in the sandbox."""

    host_port: int
    port: int
    auto: bool = False
    """Made by auto-publish for a listener seen in the sandbox (gone when the listener is)."""

    def __post_init__(self) -> None:
        if self.port == AGENT_PORT:
            raise _bad(
                f"publish: port {AGENT_PORT} is the sandbox's agent, corral's own way in (it runs commands as "
                "root): it is never published",
                "publish",
                self.port,
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_published(value: object) -> Published:
    """``{"host_port": 8080, "port": 3000}`` as a request gives it."""
    if not isinstance(value, dict) or set(value) - {"host_port", "port"} or "port" not in value:
        raise _bad(f"publish: {value!r} is not {{'host_port': N, 'port': N}}", "publish")
    port = value["port"]
    host_port = value.get("host_port") or port
    for p in (host_port, port):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise _bad(f"publish: {value!r} has a port outside 1-65535", "publish")
    return Published(host_port=host_port, port=port)


def parse_publish(value: str) -> Published:
    """``8080:3000`` (host port 8080 to sandbox port 3000) or ``3000`` (the same number on both)."""
    host, _, inner = value.partition(":")
    try:
        host_port, port = int(host), int(inner or host)
    except ValueError:
        raise _bad(f"publish: {value!r} is not HOST_PORT:PORT such as 8080:3000", "publish", value) from None
    for p in (host_port, port):
        if not 1 <= p <= 65535:
            raise _bad(f"publish: {value!r} has a port outside 1-65535", "publish", value)
    return Published(host_port=host_port, port=port)


def _entries(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list | tuple):
        raise _bad(f"{key} must be a list", f"network.{key}", value)
    if len(value) > MAX_ENTRIES:
        raise _bad(f"{key} has {len(value)} entries; at most {MAX_ENTRIES}", f"network.{key}")
    return list(value)


def _bad(message: str, where: str, value: object = None) -> InvalidRequest:
    details: dict[str, Any] = {"field": where}
    if value is not None:
        details["value"] = value if isinstance(value, str | int | float | bool) else repr(value)
    return InvalidRequest(message, details=details)
