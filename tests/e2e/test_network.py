"""Egress policies, DNS and isolation, against hosts in a network namespace of the test's own.

Every destination is a host this module creates (tests/networld.py): a
"public" one on 203.0.113.x, LAN ones on 10.254.0.10, 172.31.250.10 and 100.64.0.10 (CGNAT), a metadata service on
169.254.169.254 and a resolver; plus a TCP service on the host itself and
other sandboxes. Each rule is checked both ways: closed where the policy
says so, open where it says so (so a test cannot pass by everything being
closed).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral import InvalidRequest, Sandbox
from tests import networld
from tests.serverproc import ServerProcess, worker_index

pytestmark = [pytest.mark.runsc, pytest.mark.xdist_group("network")]

HELLO_PUBLIC = f"hello from {networld.PUBLIC}\n"


@pytest.fixture(scope="module")
def world() -> Iterator[None]:
    with networld.world():
        yield


@pytest.fixture(scope="module")
def net_server(world: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CORRAL_DNS_SERVERS": json.dumps([networld.DNS])}
    with ServerProcess(tmp_path_factory.mktemp("net"), subnet_index=46 + worker_index(), env=env).running() as proc:
        yield proc


@pytest.fixture
def make(net_server: ServerProcess) -> Iterator[object]:
    made: list[Sandbox] = []

    def create(**kwargs: object) -> Sandbox:
        sbx = Sandbox.create(url=net_server.url, **kwargs)  # type: ignore[arg-type]
        made.append(sbx)
        return sbx

    yield create
    for sbx in made:
        with contextlib.suppress(Exception):
            sbx.kill()
        sbx.close()


def fetch(sbx: Sandbox, url: str) -> str:
    """What ``curl`` gets from ``url`` inside the sandbox, or ``refused (exit N)``."""
    r = sbx.commands.run(f'curl -s -m 5 {url}; echo "rc=$?"', timeout=30)
    body, _, code = r.stdout.rpartition("rc=")
    return body if code.strip() == "0" else f"refused (exit {code.strip()})"


def resolves(sbx: Sandbox, name: str) -> str | None:
    r = sbx.commands.run(f"getent ahostsv4 {name} | head -1; true", timeout=30)
    return r.stdout.split()[0] if r.stdout.strip() else None


@pytest.fixture(scope="module")
def host_service(world: None) -> Iterator[int]:
    """A TCP service on the host, on every address: sandboxes must not reach it unless allowed."""
    srv = socket.create_server(("0.0.0.0", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nthe host!\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(5)
    srv.close()


@pytest.mark.hostile("network", "reach the LAN (10/8, 172.16/12, CGNAT) and the metadata service under public_only")
def test_public_only_reaches_the_public_internet_and_nothing_private(make) -> None:
    sbx = make()
    assert sbx.info().network["mode"] == "public_only"
    assert fetch(sbx, f"http://{networld.PUBLIC}/") == HELLO_PUBLIC
    assert fetch(sbx, "http://public.test/") == HELLO_PUBLIC  # DNS through corral's forwarder
    for private in (networld.LAN, networld.LAN_172, networld.CGNAT, networld.METADATA):
        assert fetch(sbx, f"http://{private}/").startswith("refused"), private
    assert fetch(sbx, "http://lan.test/").startswith("refused")  # resolving a private name opens nothing


@pytest.mark.hostile("network", "connect to a service on the host (at the gateway and at another host address)")
def test_the_host_is_closed_except_for_allowed_ports_at_the_gateway(make, host_service: int) -> None:
    closed = make()
    gateway = closed.commands.run("ip route 2>/dev/null | awk '/default/ {print $3}'; true").stdout.strip()
    gateway = gateway or closed.commands.run("awk '/nameserver/ {print $2}' /etc/resolv.conf").stdout.strip()
    assert fetch(closed, f"http://{gateway}:{host_service}/").startswith("refused")
    assert fetch(closed, f"http://{networld.HOST_LINK}:{host_service}/").startswith("refused")  # another host address

    opened = make(network={"allow_host": [host_service]})
    gateway = opened.commands.run("awk '/nameserver/ {print $2}' /etc/resolv.conf").stdout.strip()
    assert fetch(opened, f"http://{gateway}:{host_service}/") == "the host!\n"
    assert fetch(opened, f"http://{networld.HOST_LINK}:{host_service}/").startswith("refused")  # only the gateway


@pytest.mark.hostile("network", "get anything out under none, DNS included, also by asking a resolver directly")
def test_none_lets_nothing_out_and_dns_fails_fast(make) -> None:
    sbx = make(network={"mode": "none"})
    assert fetch(sbx, f"http://{networld.PUBLIC}/").startswith("refused")
    assert resolves(sbx, "public.test") is None
    # Asking a resolver of its own choosing directly is answered by corral's forwarder, which refuses.
    assert _raw_dns(sbx, networld.DNS, "public.test") == "REFUSED"


@pytest.mark.hostile("network", "reach addresses and names outside its allowlist (a resolver of its own choosing too)")
def test_allowlist_opens_exactly_what_it_names(make) -> None:
    sbx = make(network={"mode": "allowlist", "allow_domains": ["public.test", "*.allowed.test"],
                        "allow_cidrs": [f"{networld.LAN}/32"]})  # fmt: skip
    assert fetch(sbx, "http://public.test/") == HELLO_PUBLIC
    assert fetch(sbx, "http://www.allowed.test/") == f"hello from {networld.PUBLIC_OTHER}\n"
    assert fetch(sbx, f"http://{networld.LAN}/") == f"hello from {networld.LAN}\n"
    assert resolves(sbx, "other.test") is None  # a name not on the list is not even resolved
    assert _raw_dns(sbx, networld.DNS, "other.test") == "REFUSED"

    other = make(network={"mode": "allowlist", "allow_domains": ["public.test"]})
    assert fetch(other, f"http://{networld.PUBLIC_OTHER}/").startswith("refused")  # never resolved: not pinned
    assert fetch(other, f"http://{networld.METADATA}/").startswith("refused")


@pytest.mark.hostile("network", "reach the metadata service with allow_lan")
def test_allow_lan_opens_private_ranges_but_not_link_local(make) -> None:
    sbx = make(network={"allow_lan": True})
    for private in (networld.LAN, networld.LAN_172, networld.CGNAT):
        assert fetch(sbx, f"http://{private}/") == f"hello from {private}\n"
    assert fetch(sbx, f"http://{networld.METADATA}/").startswith("refused")
    assert fetch(sbx, f"http://{networld.PUBLIC}/") == HELLO_PUBLIC


@pytest.mark.hostile("network", "connect to another sandbox's server (also with allow_lan)")
def test_sandboxes_cannot_reach_each_other_unless_asked(make) -> None:
    server = make()
    server.commands.run("cd /tmp && echo neighbour > index.html && exec python3 -m http.server 8000", background=True)
    address = server.info().address
    _wait_for(lambda: "neighbour" in server.commands.run("curl -s -m 2 http://127.0.0.1:8000/; true").stdout)
    assert fetch(make(), f"http://{address}:8000/").startswith("refused")
    assert fetch(make(network={"allow_lan": True}), f"http://{address}:8000/").startswith("refused")
    assert fetch(make(network={"allow_cidrs": [address]}), f"http://{address}:8000/") == "neighbour\n"


@pytest.mark.hostile("network", "keep egress after its policy was tightened to none")
def test_a_policy_change_holds_at_once_on_a_running_sandbox(make) -> None:
    sbx = make()
    assert fetch(sbx, f"http://{networld.PUBLIC}/") == HELLO_PUBLIC
    info = sbx.set_network(mode="none")
    assert info.network["mode"] == "none"
    assert fetch(sbx, f"http://{networld.PUBLIC}/").startswith("refused")
    sbx.set_network(mode="allowlist", allow_cidrs=[networld.LAN])
    assert fetch(sbx, f"http://{networld.LAN}/") == f"hello from {networld.LAN}\n"
    assert fetch(sbx, f"http://{networld.PUBLIC}/").startswith("refused")


def test_bad_policies_are_refused_naming_the_entry(net_server: ServerProcess, make) -> None:
    cases = [
        ({"allow_cidrs": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"allow_cidrs": ["fd00::/8"]}, "fd00::/8"),
        ({"allow_domains": ["bad_name!.com"]}, "bad_name!.com"),
        ({"allow_host": [70000]}, "70000"),
        ({"mode": "none", "allow_domains": ["pypi.org"]}, "allowlist"),
    ]
    before = len(Sandbox.list(url=net_server.url))
    for policy, named in cases:
        with pytest.raises(InvalidRequest) as caught:
            make(network=policy)
        assert named in str(caught.value), (policy, str(caught.value))
    assert len(Sandbox.list(url=net_server.url)) == before  # nothing half-made
    sbx = make()
    with pytest.raises(InvalidRequest, match="not a domain name"):
        sbx.set_network(mode="allowlist", allow_domains=["-x-.com"])
    assert sbx.info().network["mode"] == "public_only"  # unchanged
    r = httpx.get(f"{net_server.url}/health")
    assert r.status_code == 200


def test_policies_hold_across_a_server_restart(make, net_server: ServerProcess) -> None:
    closed = make(network={"mode": "none"})
    opened = make()
    net_server.kill9()
    net_server.start()
    closed, opened = Sandbox.connect(closed.id, url=net_server.url), Sandbox.connect(opened.id, url=net_server.url)
    assert fetch(closed, f"http://{networld.PUBLIC}/").startswith("refused")
    assert fetch(opened, f"http://{networld.PUBLIC}/") == HELLO_PUBLIC
    assert fetch(opened, "http://public.test/") == HELLO_PUBLIC  # DNS forwarder back, on its new port
    assert fetch(opened, f"http://{networld.LAN}/").startswith("refused")


def _raw_dns(sbx: Sandbox, server: str, name: str) -> str:
    """The rcode a DNS question sent straight to ``server`` gets (as a program that ignores resolv.conf would)."""
    script = (Path(__file__).parent / "apps" / "dns_probe.py").read_text()
    sbx.files.write("/tmp/dns_probe.py", script)
    return sbx.commands.run(f"python3 /tmp/dns_probe.py {server} {name}", timeout=30).stdout.strip()


def _wait_for(check, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_a_pool_sandbox_claimed_with_another_policy_gets_that_policy(net_server: ServerProcess, make) -> None:
    """A pooled sandbox runs the default policy; a claim asking for another has it in force at once."""
    pools = f"{net_server.url}/v1/pools/image:corral/base"

    def pooled() -> list[str]:
        found = httpx.get(f"{net_server.url}/v1/sandboxes", params={"state": "pooled"}).json()["sandboxes"]
        return [s["id"] for s in found]

    assert httpx.put(pools, json={"size": 1}).status_code == 200
    try:
        for network, public_reachable in (({"mode": "none"}, False), (None, True)):
            deadline = time.monotonic() + 60
            while not pooled() and time.monotonic() < deadline:
                time.sleep(0.1)
            waiting = pooled()
            sbx = make(network=network) if network else make()
            assert sbx.id in waiting  # claimed from the pool, not made anew
            got = fetch(sbx, f"http://{networld.PUBLIC}/")
            assert (got == HELLO_PUBLIC) is public_reachable, got
    finally:
        assert httpx.delete(pools).status_code == 204
