"""Host-side firewall: sandboxes answer the host, but cannot open anything on it.

Until per-sandbox egress policies exist, every packet a sandbox starts is
dropped on the host side of its link: toward the host itself (input) and
toward anywhere else (forward). Replies to the host's own connections (the
server talking to the agent) pass.

Each server has a table of its own, named after its sandbox subnet and
matching only that subnet, so several servers on one host (tests, benches)
never drop each other's traffic and the host's other rules are never touched.
"""

from __future__ import annotations

from corral import hostcmd

LEGACY_TABLE = "corral"  # one table for every server, before tables were per subnet


def table_name(subnet: str) -> str:
    return "corral_" + subnet.replace(".", "_").replace("/", "_")


def ruleset(subnet: str) -> str:
    return f"""
table inet {table_name(subnet)} {{
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        ip saddr {subnet} ct state established,related accept
        ip saddr {subnet} drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        ip saddr {subnet} drop
        ip daddr {subnet} drop
    }}
}}
"""


async def install(subnet: str) -> None:
    """(Re)load this server's table; idempotent."""
    table = table_name(subnet)
    await hostcmd.run(
        ["nft", "-f", "-"],
        input=(
            f"table inet {LEGACY_TABLE}\ndelete table inet {LEGACY_TABLE}\n"
            f"table inet {table}\ndelete table inet {table}\n{ruleset(subnet)}"
        ).encode(),
    )
