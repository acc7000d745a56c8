"""Host-side firewall: sandboxes answer the host, but cannot open anything on it.

Until per-sandbox egress policies exist, every packet a sandbox starts is
dropped on the host side of its link: toward the host itself (input) and
toward anywhere else (forward). Replies to the host's own connections (the
server talking to the agent) pass. Lives in its own nftables table, so it
never touches the host's other rules.
"""

from __future__ import annotations

from corral import hostcmd
from corral.net.links import HOST_IFACE_PREFIX

TABLE = "corral"

RULESET = f"""
table inet {TABLE} {{
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{HOST_IFACE_PREFIX}*" ct state established,related accept
        iifname "{HOST_IFACE_PREFIX}*" drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{HOST_IFACE_PREFIX}*" drop
        oifname "{HOST_IFACE_PREFIX}*" drop
    }}
}}
"""


async def install() -> None:
    """(Re)load corral's table; idempotent."""
    await hostcmd.run(
        ["nft", "-f", "-"],
        input=f"table inet {TABLE}\ndelete table inet {TABLE}\n{RULESET}".encode(),
    )
