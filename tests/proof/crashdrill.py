"""A crash drill: SIGKILL a real server at seeded moments under load, then audit what survived.

Shared by ``tests/proof/test_crash.py`` (20 kills) and ``bench/soak.py`` (100).
The load (creates, execs and file writes, over plain HTTP so that every
acknowledgement is seen for what it is) runs on its own event loop in a
thread while the caller's thread kills and restarts the server. What the
server acknowledged is written in a :class:`Ledger`; :func:`audit` then holds
the restarted server to it and looks on the host for anything left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral.config import Settings
from corral.net.links import SPARE
from tests.serverproc import ServerProcess

RUNSC = "/usr/local/lib/corral/bin/runsc"
RUNSC_ROOT = "/run/corral/runsc"
NETNS_DIR = Path("/var/run/netns")


@dataclass
class Ledger:
    """What the server acknowledged, and how the load went."""

    created: set[str] = field(default_factory=set)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)
    """Acknowledged kills: these must be gone."""
    execs: int = 0
    refused: int = 0
    """Requests that failed (the server was down, or went down while answering)."""
    wrong: list[str] = field(default_factory=list)
    """Answers that were acknowledged but wrong: always a bug."""


@dataclass
class Drill:
    """The load against ``server`` while the caller kills it ``kills`` times."""

    server: ServerProcess
    seed: int
    max_sandboxes: int = 4
    workers: int = 4
    ledger: Ledger = field(default_factory=Ledger)
    _stop: threading.Event = field(default_factory=threading.Event)
    _order: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def run(self, kills: int, *, uptime: tuple[float, float] = (0.2, 2.5), deadline: float = 240.0) -> int:
        """Kill the server ``kills`` times (fewer if ``deadline`` seconds pass), restarting it each time.

        Returns how many kills were done. The server is running on return.
        """
        rng = random.Random(self.seed)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._load()), name="crash-drill-load")
        self._thread.start()
        end = time.monotonic() + deadline
        done = 0
        try:
            while done < kills and time.monotonic() < end:
                time.sleep(rng.uniform(*uptime))
                self.server.kill9()
                done += 1
                self.server.start(timeout=60)
        finally:
            self._stop.set()
            self._thread.join(60)
        return done

    async def _load(self) -> None:
        rng = random.Random(self.seed + 1)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=httpx.Timeout(60.0, connect=2.0)) as http:
            tasks = [self._creator(http)] + [
                self._worker(http, random.Random(rng.random())) for _ in range(self.workers)
            ]
            await asyncio.gather(*tasks)

    async def _creator(self, http: httpx.AsyncClient) -> None:
        """Creates sandboxes; past ``max_sandboxes``, kills the oldest first (so creates go on all along)."""
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if len(self.ledger.created) >= self.max_sandboxes:
                    await self._kill_oldest(http)
                r = await http.post("/v1/sandboxes", json={"metadata": {"drill": str(n)}, "timeout": 0})
            except httpx.HTTPError:
                self.ledger.refused += 1
                await asyncio.sleep(0.05)
                continue
            if r.status_code == 201:
                self.ledger.created.add(r.json()["id"])
                self._order.append(r.json()["id"])
            else:
                self.ledger.refused += 1
                await asyncio.sleep(0.05)

    async def _kill_oldest(self, http: httpx.AsyncClient) -> None:
        # Out of the ledger before the request: from now on it may or may not exist.
        sid = self._order.pop(0)
        self.ledger.created.discard(sid)
        for key in [k for k in self.ledger.files if k[0] == sid]:
            del self.ledger.files[key]
        r = await http.delete(f"/v1/sandboxes/{sid}")
        if r.status_code == 204:
            self.ledger.killed.add(sid)
        else:
            self.ledger.refused += 1

    async def _worker(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        n = 0
        while not self._stop.is_set():
            if not self.ledger.created:
                await asyncio.sleep(0.05)
                continue
            n += 1
            sid = rng.choice(sorted(self.ledger.created))
            if sid not in self.ledger.created:
                continue
            try:
                if rng.random() < 0.5:
                    await self._exec(http, sid, rng)
                else:
                    await self._write(http, sid, rng, n)
            except httpx.HTTPError:
                self.ledger.refused += 1
                await asyncio.sleep(0.05)

    async def _exec(self, http: httpx.AsyncClient, sid: str, rng: random.Random) -> None:
        token = f"{rng.getrandbits(64):016x}"
        r = await http.post(f"/v1/sandboxes/{sid}/exec", json={"cmd": f"echo {token}", "timeout": 30})
        if r.status_code != 200:
            self.ledger.refused += 1
            return
        self.ledger.execs += 1
        body = r.json()
        if body.get("stdout") != f"{token}\n" or body.get("exit_code") != 0:
            self.ledger.wrong.append(f"exec in {sid}: {body}")

    async def _write(self, http: httpx.AsyncClient, sid: str, rng: random.Random, n: int) -> None:
        data = rng.randbytes(rng.choice((1, 100, 5000, 70_000)))
        path = f"/home/user/drill/{rng.getrandbits(32):08x}-{n}.bin"
        r = await http.put(f"/v1/sandboxes/{sid}/files", params={"path": path}, content=data)
        if r.status_code != 200:
            self.ledger.refused += 1
        elif sid in self.ledger.created:
            self.ledger.files[(sid, path)] = data


def audit(server: ServerProcess, ledger: Ledger) -> list[str]:
    """Everything wrong with a restarted server against ``ledger``: an empty list if nothing is."""
    problems = list(ledger.wrong)
    listed = {s["id"]: s for s in httpx.get(f"{server.url}/v1/sandboxes", timeout=60).json()["sandboxes"]}
    for sid in sorted(ledger.created):
        row = listed.get(sid)
        if row is None:
            problems.append(f"acknowledged sandbox {sid} is lost")
        elif row["state"] == "dead":
            if not row.get("error"):
                problems.append(f"sandbox {sid} is dead with no reason")
            if runsc_status(sid) in ("running", "created", "paused"):
                problems.append(f"sandbox {sid} is shown dead but its runtime is {runsc_status(sid)}")
        elif row["state"] != "running":
            problems.append(f"sandbox {sid} is {row['state']}")
        else:
            r = httpx.post(f"{server.url}/v1/sandboxes/{sid}/exec", json={"cmd": "echo alive"}, timeout=60)
            if r.status_code != 200 or r.json().get("stdout") != "alive\n":
                problems.append(f"sandbox {sid} does not answer an exec: {r.status_code} {r.text[:300]}")
    for sid in sorted(ledger.killed & set(listed)):
        problems.append(f"sandbox {sid} is still listed after its kill was acknowledged")
    for (sid, path), data in sorted(ledger.files.items()):
        if listed.get(sid, {}).get("state") != "running":
            continue  # reported above
        r = httpx.get(f"{server.url}/v1/sandboxes/{sid}/files", params={"path": path}, timeout=60)
        if r.status_code != 200 or r.content != data:
            problems.append(f"acknowledged write {sid}:{path} ({len(data)} bytes) reads back {r.status_code}, "
                            f"{len(r.content)} bytes")  # fmt: skip
    # A boot snapshot being made is a hidden sandbox of the server's own, not an orphan: wait for it.
    deadline = time.monotonic() + 120
    while httpx.get(f"{server.url}/v1/boot-snapshots", timeout=60).json()["making"]:
        if time.monotonic() > deadline:
            problems.append("a boot snapshot was still being made 120 s after the last start")
            break
        time.sleep(0.2)
    log = server.log_path.read_text(errors="replace")
    keep = int(server.env.get("CORRAL_SPARE_LINKS", Settings.model_fields["spare_links"].default))
    problems += orphans(
        server.data_dir, set(listed), subnet=server.env["CORRAL_SANDBOX_SUBNET"], log=log, spare_links=keep
    )
    return problems


def orphans(data_dir: Path, known: set[str], *, subnet: str, log: str, spare_links: int = 0) -> list[str]:
    """Runtime processes, runtime state, network namespaces and mounts of this server's with no sandbox row.

    Up to ``spare_links`` links made ahead (``corral-spare-*``) are the server's own; more are a leak.
    """
    found = []
    sandboxes = f"{data_dir}/sandboxes/"
    for pid, sid in runsc_processes(sandboxes):
        if sid not in known:
            found.append(f"runsc process {pid} of unknown sandbox {sid}")
    for sid in runsc_containers(sandboxes):
        if sid not in known:
            found.append(f"runsc state of unknown sandbox {sid}")
    namespaces = netns_in(subnet, log)
    spares = [sid for sid in namespaces if sid.startswith(SPARE)]
    if len(spares) > spare_links:
        found.append(f"{len(spares)} links made ahead, more than the {spare_links} kept: {spares}")
    for sid in namespaces:
        if sid not in known and sid not in spares:
            found.append(f"network namespace corral-{sid} of unknown sandbox")
    for sid, mount in mounts_under(sandboxes):
        if sid not in known:
            found.append(f"mount {mount} of unknown sandbox {sid}")
    return found


def runsc_status(sid: str) -> str:
    out = subprocess.run([RUNSC, "--root", RUNSC_ROOT, "state", sid], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return "missing"
    return str(json.loads(out.stdout).get("status", ""))


def runsc_processes(sandboxes: str) -> list[tuple[int, str]]:
    """(pid, sandbox id) of every process whose command line names a bundle under ``sandboxes``."""
    pattern = re.compile(re.escape(sandboxes) + r"([a-z0-9]+)/bundle")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        match = pattern.search(cmdline)
        if match and "runsc" in cmdline:
            found.append((int(proc.name), match.group(1)))
    return found


def runsc_containers(sandboxes: str) -> list[str]:
    """Sandbox ids runsc keeps state for whose bundle is under ``sandboxes``."""
    out = subprocess.run([RUNSC, "--root", RUNSC_ROOT, "list", "--format", "json"], capture_output=True, text=True)
    containers: list[dict[str, Any]] = json.loads(out.stdout or "null") or []
    return [c["id"] for c in containers if str(c.get("bundle", "")).startswith(sandboxes)]


def netns_in(subnet: str, log: str) -> list[str]:
    """Sandbox ids of the ``corral-<id>`` network namespaces of the server with ``subnet`` (and ``log``).

    A running gVisor sandbox's netstack takes the address off its ``eth0``, so a
    namespace is told by its veth's host end, named after an address of the
    subnet (see :mod:`corral.net.links`); one with no veth left, by its id in the log.
    """
    net = ipaddress.ip_network(subnet)
    hosts = {link["ifindex"]: link["ifname"] for link in _ip_json(["ip", "-j", "link"])}
    found = []
    for ns in sorted(NETNS_DIR.glob("corral-*")):
        sid = ns.name.removeprefix("corral-")
        links = _ip_json(["ip", "-n", ns.name, "-j", "link", "show", "eth0"])
        peer = hosts.get(links[0].get("link_index")) if links else None
        if peer is not None and peer.startswith("crl"):
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(int(peer.removeprefix("crl"), 16)) in net:
                    found.append(sid)
        elif sid in log:
            found.append(sid)
    return found


def _ip_json(argv: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    try:
        return list(json.loads(out.stdout or "[]"))
    except ValueError:
        return []


def mounts_under(sandboxes: str) -> list[tuple[str, str]]:
    """(sandbox id, mount point) of every mount under ``sandboxes``, from this mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(sandboxes):
            found.append((point.removeprefix(sandboxes).split("/", 1)[0], point))
    return found
