"""The host side of every sandbox's link: egress policy as nftables rules, and NAT.

Each server owns one table, named after its sandbox subnet and matching only
that subnet, so several servers on one host never drop each other's traffic
and the host's other rules are never touched. In it:

- every packet a sandbox *starts* (conntrack's original direction) goes
  through that sandbox's own chains, on every packet, so a policy change
  cuts connections it no longer allows at once: ``out_<id>`` for traffic
  forwarded anywhere, ``in_<id>`` for traffic to the host itself;
- replies to connections the host opened (the server talking to the agent,
  the preview proxy, published ports) pass;
- DNS from a sandbox, to any address, is redirected to corral's forwarder
  (:mod:`corral.net.dns`), which answers by the same policy;
- what leaves for the world is masqueraded behind the host's address;
- IPv6 from or to sandbox links is dropped (sandboxes have IPv4 only).

``pin_<id>`` holds the addresses that the forwarder resolved for the
sandbox's allowed domains; they stay reachable until the policy changes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corral.batching import Batcher
from corral.net import nftables
from corral.net.links import HOST_IFACE_PREFIX
from corral.net.policy import NEVER_PUBLIC, PRIVATE_RANGES, EgressPolicy

log = logging.getLogger(__name__)

REJECT = "reject with icmpx type admin-prohibited"
"""A refused packet is answered, so a program in the sandbox fails at once instead of timing out."""
LEGACY_TABLE = "corral"  # one table for every server, before tables were per subnet


@dataclass(frozen=True, slots=True)
class Attachment:
    """One sandbox as the firewall sees it."""

    sandbox_id: str
    address: str
    gateway: str
    policy: EgressPolicy


def table_name(subnet: str) -> str:
    return "corral_" + subnet.replace(".", "_").replace("/", "_")


class Firewall:
    """This server's nftables table. Every change is one atomic transaction (:mod:`corral.net.nftables`)."""

    def __init__(self, subnet: str, *, dns_port: int) -> None:
        self.subnet = subnet
        self.table = table_name(subnet)
        self.dns_port = dns_port
        # Sandboxes attached or detached together (a fork, a burst) go in one transaction.
        self._attachments: Batcher[Attachment] = Batcher(self._attach_many, self._attach_one)
        self._detachments: Batcher[tuple[str, str]] = Batcher(self._detach_many, self._detach_one)

    async def install(self, sandboxes: Iterable[Attachment]) -> None:
        """(Re)load the whole table with ``sandboxes`` attached; what was there before goes, atomically."""
        t = self.table
        script = [
            f"table inet {LEGACY_TABLE}",
            f"delete table inet {LEGACY_TABLE}",
            f"table inet {t}",
            f"delete table inet {t}",
            self._base(),
        ]
        for sandbox in sandboxes:
            script += self._attach(sandbox, fresh=True)
        await self._nft(script)

    async def attach(self, sandbox: Attachment) -> None:
        """Apply ``sandbox.policy`` to its address (again, for a change); forgets its pinned addresses."""
        await self._attachments.run(sandbox)

    async def _attach_many(self, sandboxes: Sequence[Attachment]) -> None:
        await self._nft([line for sandbox in sandboxes for line in self._attach(sandbox, fresh=False)])

    async def _attach_one(self, sandbox: Attachment) -> None:
        await self._attach_many([sandbox])

    async def detach(self, sandbox_id: str, address: str) -> None:
        """Remove the sandbox's rules; anything it still sends is dropped (unknown addresses are)."""
        await self._detachments.run((sandbox_id, address))

    async def _detach_many(self, sandboxes: Sequence[tuple[str, str]]) -> None:
        await self._nft([step for sandbox in sandboxes for step in self._detach(*sandbox)])

    async def _detach_one(self, sandbox: tuple[str, str]) -> None:
        steps = self._detach(*sandbox)
        if not (await self._nft(steps, check=False)).ok:
            for step in steps:  # some were never made (a crash between steps): remove the rest
                await self._nft([step], check=False)

    async def pin(self, sandbox_id: str, addresses: Iterable[str]) -> None:
        """Make ``addresses`` reachable for the sandbox (answers for its allowed domains)."""
        v4 = sorted({a for a in addresses if ipaddress.ip_address(a).version == 4})
        if v4:
            await self._nft([f"add element inet {self.table} {_names(sandbox_id)[2]} {{ {', '.join(v4)} }}"])

    async def remove_table(self) -> None:
        await self._nft([f"table inet {self.table}", f"delete table inet {self.table}"], check=False)

    # -- rules ---------------------------------------------------------------

    def _base(self) -> str:
        # Nothing here may match traffic that is not this subnet's: a table outlives its
        # server (its sandboxes do), and a rule on a port it held would hit whoever holds it next.
        s, ifs, dns = self.subnet, f'"{HOST_IFACE_PREFIX}*"', self.dns_port
        return f"""
table inet {self.table} {{
    map egress {{ type ipv4_addr : verdict; }}
    map to_host {{ type ipv4_addr : verdict; }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip saddr {s} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {s} ip daddr != {s} oifname != {ifs} masquerade
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {ifs} meta nfproto ipv6 drop
        ip saddr {s} ct direction reply accept
        ip saddr {s} ip saddr vmap @to_host
        ip saddr {s} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {ifs} meta nfproto ipv6 drop
        oifname {ifs} meta nfproto ipv6 drop
        ip daddr {s} ct direction reply accept
        ip saddr {s} ct direction original ip saddr vmap @egress
        ip saddr {s} drop
        ip daddr {s} drop
    }}
}}"""

    def _detach(self, sandbox_id: str, address: str) -> list[str]:
        t, o, i, p = self.table, *_names(sandbox_id)
        return [
            f"delete element inet {t} egress {{ {address} }}",
            f"delete element inet {t} to_host {{ {address} }}",
            f"delete chain inet {t} {o}",
            f"delete chain inet {t} {i}",
            f"delete set inet {t} {p}",
        ]

    def _attach(self, sandbox: Attachment, *, fresh: bool) -> list[str]:
        t, p = self.table, sandbox.policy
        o, i, pins = _names(sandbox.sandbox_id)
        out = [f"ip daddr @{pins} accept"]
        if p.allow_cidrs:
            out.append(f"ip daddr {{ {', '.join(p.allow_cidrs)} }} accept")
        out.append(f"ip daddr {self.subnet} {REJECT}")  # other sandboxes, unless named above
        if p.allow_lan:
            out.append(f"ip daddr {{ {', '.join(PRIVATE_RANGES)} }} accept")
        if p.mode == "public_only":
            out.append(f"ip daddr {{ {', '.join(PRIVATE_RANGES + NEVER_PUBLIC)} }} {REJECT}")
            out.append("accept")
        else:
            out.append(REJECT)
        # DNS always reaches the forwarder, which answers by the policy (REFUSED for "none",
        # at once: a dropped question would make resolvers wait many seconds to fail).
        into = [f"meta l4proto {{ tcp, udp }} th dport {self.dns_port} accept"]
        if p.allow_host:
            into.append(f"ip daddr {sandbox.gateway} tcp dport {{ {', '.join(map(str, p.allow_host))} }} accept")
        into.append(REJECT)
        script = [f"add set inet {t} {pins} {{ type ipv4_addr; size 65535; }}"]
        if not fresh:
            script.append(f"flush set inet {t} {pins}")
        for chain, rules in ((o, out), (i, into)):
            script += [f"add chain inet {t} {chain}", f"flush chain inet {t} {chain}"]
            script += [f"add rule inet {t} {chain} {rule}" for rule in rules]
        script += [
            f"add element inet {t} egress {{ {sandbox.address} : jump {o} }}",
            f"add element inet {t} to_host {{ {sandbox.address} : jump {i} }}",
        ]
        return script

    async def _nft(self, script: list[str], *, check: bool = True) -> nftables.Outcome:
        return await nftables.apply("\n".join(script) + "\n", check=check)


def _names(sandbox_id: str) -> tuple[str, str, str]:
    """The sandbox's chains (out, in) and pin set."""
    return f"out_{sandbox_id}", f"in_{sandbox_id}", f"pin_{sandbox_id}"
