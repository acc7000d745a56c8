"""Network pieces without sandboxes: policy checks, the DNS forwarder's answers, preview heads, /etc writes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from corral.errors import InvalidRequest, RuntimeFailure
from corral.net import dns as corral_dns
from corral.net.firewall import Attachment, Firewall
from corral.net.policy import EgressPolicy, parse_published
from corral.net.preview import PreviewError, _Head
from corral.runtimes.etc_files import write_own_files


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"allow_cidrs": ["300.1.1.1/8"]}, "300.1.1.1/8"),
        ({"allow_cidrs": [42]}, "42"),
        ({"allow_cidrs": "10.0.0.0/8"}, "must be a list"),
        ({"allow_domains": ["*."]}, "'*.'"),
        ({"allow_domains": ["a..b"]}, "a..b"),
        ({"allow_domains": ["localhost"]}, "localhost"),
        ({"allow_host": [0]}, "0"),
        ({"allow_host": [True]}, "True"),
        ({"mode": "everything"}, "everything"),
        ({"previews": "open"}, "open"),
        ({"allow_lan": "yes"}, "allow_lan"),
        ({"bogus": 1}, "bogus"),
        ({"allow_cidrs": ["10.0.0.0/8"] * 300}, "at most 256"),
    ],
)
def test_bad_policies_name_what_is_wrong(policy: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        EgressPolicy.from_json(policy)
    assert named in caught.value.message


def test_policies_are_normalized() -> None:
    p = EgressPolicy.from_json(
        {"allow_cidrs": ["10.1.2.3/16", "8.8.8.8", "10.1.0.0/16"], "allow_domains": ["PyPI.org.", "*.GitHub.com"],
         "allow_host": [8080, 22, 8080]}
    )  # fmt: skip
    assert p.allow_cidrs == ("10.1.0.0/16", "8.8.8.8/32")
    assert p.allow_domains == ("pypi.org", "*.github.com")
    assert p.allow_host == (22, 8080)
    assert EgressPolicy.from_json(p.to_json()) == p


def test_which_names_a_policy_answers() -> None:
    listed = EgressPolicy.from_json({"mode": "allowlist", "allow_domains": ["pypi.org", "*.github.com"]})
    assert listed.allows_name("pypi.org") and listed.allows_name("PYPI.ORG.")
    assert listed.allows_name("api.github.com") and listed.allows_name("a.b.github.com")
    assert not listed.allows_name("github.com")  # a wildcard is what is below the name
    assert not listed.allows_name("evilpypi.org") and not listed.allows_name("pypi.org.evil.com")
    assert EgressPolicy().allows_name("anything.example")
    assert not EgressPolicy(mode="none").dns


def test_published_ports_are_checked() -> None:
    assert parse_published({"port": 3000}).host_port == 3000
    assert parse_published({"host_port": 8080, "port": 3000}).host_port == 8080
    for bad in ({"port": 0}, {"port": 3000, "host_port": 70000}, {"ports": 1}, "3000"):
        with pytest.raises(InvalidRequest):
            parse_published(bad)


def test_firewall_rules_follow_the_policy() -> None:
    fw = Firewall("10.99.0.0/16", dns_port=5353)

    def rules(**policy: object) -> str:
        a = Attachment("sbx1", "10.99.0.2", "10.99.0.1", EgressPolicy.from_json(policy))
        return "\n".join(fw._attach(a, fresh=True))

    public = rules()
    assert (
        "169.254.0.0/16" in public
        and "10.0.0.0/8" in public
        and "add rule inet corral_10_99_0_0_16 out_sbx1 accept" in public
    )
    closed = rules(mode="none")
    assert "out_sbx1 accept" not in closed.replace("@pin_sbx1 accept", "")
    assert "tcp dport" not in closed
    host = rules(mode="allowlist", allow_host=[8080])
    assert "ip daddr 10.99.0.1 tcp dport { 8080 } accept" in host
    lan = rules(allow_lan=True, allow_cidrs=["10.99.0.6"])
    # the named neighbour is opened before other sandboxes are closed, the LAN after
    assert (
        lan.index("10.99.0.6/32 } accept")
        < lan.index("ip daddr 10.99.0.0/16 reject")
        < lan.index("192.168.0.0/16, 100.64.0.0/10 } accept")
    )


class _Upstream:
    """A real DNS server on loopback (UDP) that knows a few names."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.asked: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wire, peer = await loop.sock_recvfrom(self.sock, 4096)
            query = dns.message.from_wire(wire)
            name = query.question[0].name.to_text(omit_final_dot=True)
            self.asked.append(name)
            response = dns.message.make_response(query)
            if name in self.names:
                response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", self.names[name]))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            await loop.sock_sendto(self.sock, response.to_wire(), peer)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_forwarder_answers_by_policy_and_pins_before_answering() -> None:
    upstream = _Upstream({"pypi.org": "203.0.113.5", "other.test": "203.0.113.6"})
    serving = asyncio.create_task(upstream.serve())
    pinned: list[tuple[str, list[str]]] = []
    listed = EgressPolicy.from_json({"mode": "allowlist", "allow_domains": ["pypi.org"]})
    clients = {
        "10.9.0.2": corral_dns.Client("sblist", listed),
        "10.9.0.6": corral_dns.Client("sbpublic", EgressPolicy()),
        "10.9.0.10": corral_dns.Client("sbnone", EgressPolicy(mode="none")),
    }  # fmt: skip

    async def pin(sandbox_id: str, addresses: list[str]) -> None:
        pinned.append((sandbox_id, addresses))

    forwarder = corral_dns.Forwarder(upstreams=[upstream.address], lookup=clients.get, pin=pin)

    async def ask(source: str, name: str) -> dns.message.Message:
        wire = await forwarder.answer(dns.message.make_query(name, dns.rdatatype.A).to_wire(), source, tcp=False)
        assert wire is not None
        return dns.message.from_wire(wire)

    try:
        assert (await ask("10.9.0.2", "pypi.org")).answer[0][0].address == "203.0.113.5"
        assert pinned == [("sblist", ["203.0.113.5"])]
        assert (await ask("10.9.0.2", "other.test")).rcode() == dns.rcode.REFUSED
        assert (await ask("10.9.0.6", "other.test")).answer[0][0].address == "203.0.113.6"
        assert (await ask("10.9.0.10", "pypi.org")).rcode() == dns.rcode.REFUSED
        assert (await ask("10.9.0.99", "pypi.org")).rcode() == dns.rcode.REFUSED  # not a sandbox of ours
        assert upstream.asked == ["pypi.org", "other.test"]  # refused names never went upstream
        assert len(pinned) == 1  # public_only pins nothing: it needs no pins
        assert await forwarder.answer(b"\x00garbage", "10.9.0.2", tcp=False) is None
    finally:
        serving.cancel()
        upstream.sock.close()


def test_upstreams_parse() -> None:
    assert corral_dns.parse_upstream("1.2.3.4") == ("1.2.3.4", 53)
    assert corral_dns.parse_upstream("1.2.3.4:5353") == ("1.2.3.4", 5353)
    assert corral_dns.parse_upstream("[::1]:53") == ("::1", 53)
    assert corral_dns.parse_upstream("::1") == ("::1", 53)


def test_preview_heads_lose_the_token_and_keep_the_rest() -> None:
    head = _Head.parse(
        b"GET /app?x=1&corral_preview_token=abc&y=2 HTTP/1.1\r\nHost: 3000-sb1.localhost:7424\r\n"
        b"Cookie: a=1; corral_preview_token=def; b=2\r\nX-Corral-Preview-Token: ghi\r\n\r\n"
    )
    assert head.take_query_token() == "abc"
    assert head.target == "/app?x=1&y=2"
    assert head.take_cookie_token() == "def"
    assert head.take_header("x-corral-preview-token") == "ghi"
    sent = head.encode().decode()
    assert "corral_preview_token" not in sent and "ghi" not in sent
    assert "Cookie: a=1; b=2" in sent and "Host: 3000-sb1.localhost:7424" in sent
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/2\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        with pytest.raises(PreviewError):
            _Head.parse(bad)


def test_etc_files_never_follow_the_images_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "host-shadow"
    victim.write_text("root:secret\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hosts").symlink_to(victim)
    write_own_files(rootfs, {"hosts": "127.0.0.1 localhost\n"})
    assert victim.read_text() == "root:secret\n"
    assert (rootfs / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert not (rootfs / "etc" / "hosts").is_symlink()

    other = tmp_path / "rootfs2"
    other.mkdir()
    (other / "etc").symlink_to(tmp_path / "host-etc")  # the whole /etc pointing at the host's
    (tmp_path / "host-etc").mkdir()
    write_own_files(other, {"resolv.conf": "nameserver 10.88.0.1\n"})
    assert not (tmp_path / "host-etc" / "resolv.conf").exists()
    assert (other / "etc" / "resolv.conf").read_text() == "nameserver 10.88.0.1\n"

    (other / "etc" / "hostname").mkdir()
    with pytest.raises(RuntimeFailure, match="hostname"):
        write_own_files(other, {"hostname": "x\n"})
