"""A network namespace and a veth pair per sandbox: the host's link to it.

The host side of the pair is ``crl<host address in hex>`` in the host's namespace; the sandbox
side is ``eth0`` inside ``corral-<sandbox id>``. Each link is a /30 taken from
``Settings.sandbox_subnet`` by slot number, so an address is a pure function
of the slot and needs no allocator state beyond the slot itself.

Making a link takes two ``ip`` processes: 10 ms on a quiet host, 40-60 ms
beside the rest of a create on two busy cores. A link can be made ahead, for
an address kept aside (:meth:`Links.prepare`): its namespace is then
``corral-spare-<host address in hex>``, and the create given that address
takes it over by binding the namespace to its own name (one ``mount``
call), no process on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

from corral import hostcmd
from corral.batching import Batcher
from corral.mounts import bind_mount, detach_mount
from corral.runtimes.base import NetworkSpec

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
HOST_IFACE_PREFIX = "crl"
SPARE = "spare-"
"""What the id of a link made ahead starts with (its namespace: ``corral-spare-<host address in hex>``)."""


def netns_name(sandbox_id: str) -> str:
    return f"corral-{sandbox_id}"


def netns_path(sandbox_id: str) -> Path:
    return NETNS_DIR / netns_name(sandbox_id)


def host_iface(spec: NetworkSpec) -> str:
    """Named after the host address, so servers with different subnets never clash."""
    return f"{HOST_IFACE_PREFIX}{int(ipaddress.ip_address(spec.host_address)):08x}"


def spare_id(spec: NetworkSpec) -> str:
    """The stand-in sandbox id of ``spec``'s link made ahead."""
    return f"{SPARE}{int(ipaddress.ip_address(spec.host_address)):08x}"


def slot_count(subnet: str) -> int:
    return int(ipaddress.ip_network(subnet).num_addresses // 4)


def network_for_slot(subnet: str, slot: int) -> NetworkSpec:
    net = ipaddress.ip_network(subnet)
    if not 0 <= slot < slot_count(subnet):
        raise ValueError(f"slot {slot} is outside {subnet}")
    base = net.network_address + 4 * slot
    return NetworkSpec(slot=slot, host_address=str(base + 1), sandbox_address=str(base + 2))


def network_from_info(info: dict[str, object]) -> NetworkSpec:
    """The link recorded in a runtime handle's ``info``."""
    return NetworkSpec(
        slot=int(str(info["slot"])),
        host_address=str(info["host_address"]),
        sandbox_address=str(info["sandbox_address"]),
    )


class Links:
    """Makes sandboxes' links. The host sides of links asked for together are made by one ``ip -batch``."""

    def __init__(self) -> None:
        self._host_sides: Batcher[tuple[str, NetworkSpec]] = Batcher(self._make_host_sides, self._retry_host_side)

    async def create(self, sandbox_id: str, spec: NetworkSpec) -> None:
        """Make the namespace and the veth pair, addressed and up, or take those made ahead; see :func:`delete_link`."""
        if sandbox_id != spare_id(spec) and await self._take_spare(sandbox_id, spec):
            return
        await delete_link(sandbox_id, spec)  # a leftover of a crash must not block the slot
        try:
            await self._host_sides.run((sandbox_id, spec))
            await hostcmd.run(
                ["ip", "-n", netns_name(sandbox_id), "-batch", "-"],
                input=(
                    "link set lo up\n"
                    f"addr add {spec.sandbox_address}/{spec.prefix_len} dev eth0\n"
                    "link set eth0 up\n"
                    f"route add default via {spec.host_address}\n"
                ).encode(),
            )
        except BaseException:
            await delete_link(sandbox_id, spec)
            raise

    async def prepare(self, spec: NetworkSpec) -> None:
        """Make ``spec``'s link ahead: the next :meth:`create` for its address takes it as it is."""
        await self.create(spare_id(spec), spec)

    @staticmethod
    async def remove_spares(subnet: str) -> None:
        """Remove every link made ahead for an address of ``subnet`` (what an earlier run left)."""
        net = ipaddress.ip_network(subnet)
        for path in NETNS_DIR.glob(f"corral-{SPARE}*"):
            try:
                host = ipaddress.ip_address(int(path.name.removeprefix(f"corral-{SPARE}"), 16))
            except ValueError:
                continue
            if host in net:
                spec = network_for_slot(subnet, (int(host) - int(net.network_address)) // 4)
                await delete_link(spare_id(spec), spec)

    async def _take_spare(self, sandbox_id: str, spec: NetworkSpec) -> bool:
        """Give the link made ahead for ``spec`` the sandbox's name; False if there is none (or it is broken)."""
        spare = netns_path(spare_id(spec))
        if not spare.exists():
            return False
        if not _exists(host_iface(spec)):  # its pair is gone: nothing to take
            await delete_link(spare_id(spec), spec)
            return False
        try:
            await asyncio.to_thread(_rename_netns, spare, netns_path(sandbox_id))
        except OSError:
            log.exception("could not take the link made ahead for %s; making one", spec.sandbox_address)
            await delete_link(spare_id(spec), spec)
            await delete_link(sandbox_id, spec)
            return False
        return True

    @staticmethod
    async def _make_host_sides(links: Sequence[tuple[str, NetworkSpec]]) -> None:
        script = "".join(_host_side(sandbox_id, spec) for sandbox_id, spec in links)
        await hostcmd.run(["ip", "-batch", "-"], input=script.encode())

    @classmethod
    async def _retry_host_side(cls, link: tuple[str, NetworkSpec]) -> None:
        await delete_link(*link)  # what a failed batch made of it
        await cls._make_host_sides([link])


def _host_side(sandbox_id: str, spec: NetworkSpec) -> str:
    """``ip -batch`` lines: the namespace, the pair (its sandbox end inside), the host end addressed and up."""
    ns, iface = netns_name(sandbox_id), host_iface(spec)
    return (
        f"netns add {ns}\n"
        f"link add {iface} type veth peer name eth0 netns {ns}\n"
        f"addr add {spec.host_address}/{spec.prefix_len} dev {iface}\n"
        f"link set {iface} up\n"
    )


async def delete_link(sandbox_id: str, spec: NetworkSpec) -> None:
    """Remove the namespace and both ends of the pair; missing pieces are fine."""
    if _exists(host_iface(spec)):  # asking costs nothing; an ip command, ~10 ms of each create
        await hostcmd.run(["ip", "link", "del", host_iface(spec)], check=False)
    if netns_path(sandbox_id).exists():
        await hostcmd.run(["ip", "netns", "del", netns_name(sandbox_id)], check=False)


def _rename_netns(old: Path, new: Path) -> None:
    """Name the namespace bound at ``old`` ``new`` instead (``ip netns`` names are bind mounts of it)."""
    new.touch(exist_ok=False)
    try:
        bind_mount(old, new)
    except BaseException:
        new.unlink()
        raise
    detach_mount(old)
    with contextlib.suppress(FileNotFoundError):
        old.unlink()


def _exists(iface: str) -> bool:
    """Whether the server's own namespace has that interface."""
    try:
        socket.if_nametoindex(iface)
    except OSError:
        return False
    return True
