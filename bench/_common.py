"""What the benchmarks share: a corral server, raw runsc sandboxes, statistics, output.

Every number a benchmark prints stands beside a *raw floor* measured in the
same run: gVisor driven by hand (``runsc run -detach`` / ``runsc exec``) on the
same kind of sandbox corral makes (an overlayfs over the same image rootfs, in
its own network namespace with a veth link, started with the same runsc flags
and the same ``/proc/sys/net`` workaround; see ``corral.runtimes.oci``). The
ratio of the two is what says how much corral adds.

Cleanup is the rule: every raw sandbox, mount, namespace and link made here,
every sandbox made through the SDK, and the server started here are removed
on the way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

import corral
from corral import AsyncSandbox, Sandbox
from corral.core.agent_client import AgentClient
from corral.images.agent_bundle import MOUNT_POINT, agent_command, build_agent_bundle
from corral.images.store import ImageStore
from corral.net import firewall
from corral.runtimes.base import AGENT_PORT
from corral.runtimes.oci import CAPABILITIES, OciRuntime

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
IMAGES = Path(os.environ.get("CORRAL_BENCH_IMAGES", "/var/lib/corral/images"))
RUNSC = "/usr/local/lib/corral/bin/runsc"
RUNSC_FLAGS = (
    "--network=sandbox", "--overlay2=none", "--cpu-num-from-quota", "--net-disconnect-ok", "--platform=systrap",
)  # fmt: skip
"""The flags corral passes to every runsc command (``OciRuntime._runtime_argv``)."""
CHECKPOINT_COMPRESSION = "none"
"""How corral's checkpoints are written by default (``CORRAL_SNAPSHOT_COMPRESSION``)."""
HIDE_PROC_SYS_NET = 'mount -t tmpfs none /proc/sys/net && exec "$0" "$@"'
NETNS_DIR = Path("/var/run/netns")
# Apart from the test suite's 10.200-10.253; CORRAL_BENCH_SUBNET_BASE moves both.
_BASE = int(os.environ.get("CORRAL_BENCH_SUBNET_BASE", "180"))
CORRAL_SUBNET = f"10.{_BASE}.0.0/16"
RAW_SUBNET = f"10.{_BASE + 1}.0.0/16"
SANDBOX_LIFETIME = 900
"""Seconds a benchmark's SDK sandbox lives should everything else fail: the server's reaper ends it."""
CREATE_TIMEOUT = 120.0
"""Seconds a benchmark waits for one create's answer (the SDK's default is 30): a slower one counts as refused."""
CORRAL_CLI = Path(sys.executable).with_name("corral")
"""The ``corral`` command of this Python environment."""
T = TypeVar("T")
R = TypeVar("R")


# -- signals -------------------------------------------------------------------


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM, SIGHUP and SIGALRM (a time limit) unwind like Ctrl-C, so every ``finally`` cleans up."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(signum, _terminate)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while cleaning up, so cleanup runs to its end.

    Only the main thread can (and need) do that: signals interrupt no other thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


# -- statistics and output -----------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, min, median, p99, max and mean of ``values``."""
    return {
        "n": len(values),
        "min": min(values, default=math.nan),
        "median": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values, default=math.nan),
        "mean": sum(values) / len(values) if values else math.nan,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(ours: float, floor: float) -> float:
    return ours / floor if floor > 0 else math.nan


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def stat_cols(s: Mapping[str, float]) -> list[str]:
    """Median, p99, min and max of a :func:`summary` of seconds, in ms."""
    return [ms(s["median"]), ms(s["p99"]), ms(s["min"]), ms(s["max"])]


def number(value: float) -> str:
    """Three significant digits or so: 1234, 123, 12.3, 1.23."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


@dataclass
class Row:
    """One line of ``run_all``'s table: corral's figure beside the floor's, in one unit.

    The ratio is corral's over the floor's. ``met`` is ``None`` where no issue
    sets a target for the measure.
    """

    measure: str
    corral: float
    floor: float | None = None
    unit: str = "ms"
    floor_is: str = ""
    """What the floor is, where it is not the raw runsc floor of the same measure."""
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.floor is None else ratio(self.corral, self.floor)

    def cells(self) -> list[str]:
        floor = ""
        if self.floor is not None:
            floor = f"{number(self.floor)} {self.unit}" + (f" ({self.floor_is})" if self.floor_is else "")
        return [
            self.measure,
            f"{number(self.corral)} {self.unit}",
            floor,
            "" if self.ratio is None else f"{self.ratio:.2f}x",
            self.target,
            "" if self.met is None else "met" if self.met else "NOT met",
        ]

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


ROW_HEADERS = ["", "corral", "raw runsc floor", "ratio", "target", ""]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table; the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def host_info() -> dict[str, Any]:
    runsc = subprocess.run([RUNSC, "--version"], capture_output=True, text=True, check=False)
    return {
        "corral": corral.__version__,
        "runsc": runsc.stdout.splitlines()[0] if runsc.stdout else "?",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    """``bench/results/<name>.json``: the numbers, the settings and the host."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), "host": host_info(), **data}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(BENCH_DIR.parent)}")
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="use this running corral server instead of starting one")
    parser.add_argument("--api-key", default=os.environ.get("CORRAL_API_KEY"), help="its API key, if it has one")
    return parser


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` with clean unwinding on signals; exit 130 on Ctrl-C."""
    install_signal_handlers()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; everything made has been removed", file=sys.stderr)
        sys.exit(130)


# -- host commands -------------------------------------------------------------


def in_threads(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> list[R | Exception]:
    """``fn`` of every item, ``workers`` at a time (default: all at once); each result, or the exception it raised."""

    def guarded(item: T) -> R | Exception:
        try:
            return fn(item)
        except Exception as exc:
            return exc

    if not items:
        return []
    with ThreadPoolExecutor(workers or len(items)) as pool:
        return list(pool.map(guarded, items))


def raise_any(outcomes: Sequence[object]) -> None:
    """Raise the first exception among :func:`in_threads`' outcomes, if there is one."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome


def sh(argv: Sequence[str], *, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a host command to its end; with ``check``, a failure raises with its stderr."""
    done = subprocess.run(list(argv), input=input, capture_output=True, check=False)
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}): {message}")
    return done


def is_mount(path: Path) -> bool:
    """Whether something is mounted at ``path``, a bind mount too (``os.path.ismount`` misses those)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


def unmount(path: Path) -> None:
    if is_mount(path) and sh(["umount", str(path)], check=False).returncode != 0:
        sh(["umount", "-l", str(path)], check=False)


# -- a corral server -----------------------------------------------------------


class CorralServer:
    """``corral serve`` on 127.0.0.1 with its own data dir, port and address range.

    The image store is shared (a symlink to the one ``scripts/setup`` built);
    everything else is this server's own, so it never sees anyone's sandboxes.
    """

    def __init__(self, *, subnet: str = CORRAL_SUBNET) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="corral-bench-server-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.preview_port = int(s.getsockname()[1])
        self.subnet = subnet
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        (self.data_dir / "images").symlink_to(IMAGES)
        env = {
            **os.environ,
            "CORRAL_DATA_DIR": str(self.data_dir),
            "CORRAL_PORT": str(self.port),
            "CORRAL_SANDBOX_SUBNET": self.subnet,
            "CORRAL_PREVIEW_PORT": str(self.preview_port),
            "CORRAL_DNS_SERVERS": '["127.0.0.1:9"]',  # benches resolve nothing: no query leaves the host
            "CORRAL_LOG_LEVEL": os.environ.get("CORRAL_LOG_LEVEL", "warning"),
        }
        with (self.data_dir / "server.log").open("ab") as log:
            # Its own session: a Ctrl-C reaches only us, and we stop it after killing its sandboxes.
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from corral.server.serve import run_server; run_server()"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral serve exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"corral serve did not answer within {timeout:g}s:\n{self.log()}")

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop it (it finishes its sandboxes' teardowns first), then sweep what might remain."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Only after a teardown was cut short: corral's own sweep of leftovers.
        runtime = OciRuntime(kind="runsc", data_dir=self.data_dir)
        for handle in asyncio.run(runtime.leftovers(set())):
            asyncio.run(runtime.destroy(handle))
        sandboxes = self.data_dir / "sandboxes"
        if not any(is_mount(p) for p in sandboxes.glob("*/rootfs")):
            for bundle in (self.data_dir / "agent").glob("agent-*"):
                if is_mount(bundle):  # the server's read-only mount of its agent bundle
                    unmount(bundle)
            spares = self.data_dir / "spare-disks" / "mounted"  # mounted ahead, kept for a next start
            for point in [*sorted(spares.glob("*")), spares]:
                unmount(point)
            nft = ["nft", "delete", "table", "inet", firewall.table_name(self.subnet)]
            subprocess.run(nft, capture_output=True, check=False)
            shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_for_boot_snapshots(url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
    """Until the server has made the boot snapshots it is making (at its start: the default image's).

    A create before that boots, as any create of an image and shape without one
    does; the benchmarks measure the creates a running server serves.
    """
    headers = {"X-API-Key": api_key} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/v1/boot-snapshots", headers=headers, timeout=10.0)
        if answer.status_code != 200 or not answer.json()["making"]:
            return
        time.sleep(0.1)
    print(f"boot snapshots still being made after {timeout:g}s; going on", file=sys.stderr)


@contextlib.contextmanager
def corral_url(url: str | None, api_key: str | None = None) -> Iterator[str]:
    """The given server's URL, or a server of our own for the duration (its boot snapshots made)."""
    if url:
        wait_for_boot_snapshots(url.rstrip("/"), api_key)
        yield url.rstrip("/")
        return
    server = CorralServer()
    try:
        server.start()
        wait_for_boot_snapshots(server.url)
        yield server.url
    except Exception:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        kept = RESULTS_DIR / "server-failed.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(server.data_dir / "server.log", kept)
            print(f"the server's log is kept in {kept}", file=sys.stderr)
        raise
    finally:
        with uninterrupted():
            server.stop()


@dataclass
class SandboxSet:
    """The sandboxes a benchmark makes through the SDK; :meth:`kill_all` ends every one.

    Each is tagged with this run's metadata, so one whose create was cut short
    by Ctrl-C (made by the server, never handed to us) is found and killed too.
    """

    url: str
    api_key: str | None = None
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    live: dict[str, Sandbox] = field(default_factory=dict)

    def create(self, **options: Any) -> Sandbox:
        sbx = Sandbox.create(
            url=self.url,
            api_key=self.api_key,
            metadata={"corral-bench": self.tag},
            timeout=SANDBOX_LIFETIME,
            request_timeout=CREATE_TIMEOUT,
            **options,
        )
        self.live[sbx.id] = sbx
        return sbx

    async def acreate(self, **options: Any) -> AsyncSandbox:
        """:meth:`create` through the async SDK; :meth:`kill_all` finds it by its tag."""
        return await AsyncSandbox.create(
            url=self.url,
            api_key=self.api_key,
            metadata={"corral-bench": self.tag},
            timeout=SANDBOX_LIFETIME,
            request_timeout=CREATE_TIMEOUT,
            **options,
        )

    async def akill(self, sandboxes: Sequence[AsyncSandbox], timeout: float = 60.0) -> None:
        """Kill these at once, then wait until every teardown is over."""

        async def one(sbx: AsyncSandbox) -> None:
            try:
                await sbx.kill()
            finally:
                await sbx.close()

        await asyncio.gather(*(one(s) for s in sandboxes), return_exceptions=True)
        for _ in range(int(timeout / 0.05)):
            if not any(self.alive(s.id) for s in sandboxes):
                break
            await asyncio.sleep(0.05)

    def alive(self, sandbox_id: str) -> bool:
        """Whether its teardown is still to come (its network namespace is there)."""
        return (NETNS_DIR / f"corral-{sandbox_id}").exists()

    def kill(self, sbx: Sandbox, *, wait: bool = False) -> None:
        """Kill one; with ``wait``, until its teardown is over (its namespace gone)."""
        self.live.pop(sbx.id, None)
        try:
            sbx.kill()
        finally:
            sbx.close()
        if wait:
            self.wait_torn_down(sbx.id)

    def wait_torn_down(self, sandbox_id: str, timeout: float = 30.0) -> None:
        """Until a killed sandbox's teardown is over (its namespace gone), so it weighs on no later measure."""
        deadline = time.monotonic() + timeout
        while self.alive(sandbox_id) and time.monotonic() < deadline:
            time.sleep(0.01)

    def kill_all(self) -> None:
        with uninterrupted():
            for sbx in list(self.live.values()):
                with contextlib.suppress(Exception):
                    self.kill(sbx)
            with contextlib.suppress(Exception):
                for info in Sandbox.list(url=self.url, api_key=self.api_key, metadata={"corral-bench": self.tag}):
                    with contextlib.suppress(Exception):
                        Sandbox.connect(info.id, url=self.url, api_key=self.api_key).kill()

    def __enter__(self) -> SandboxSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()


# -- raw runsc sandboxes (the floor) -------------------------------------------


@functools.cache
def base_lowerdir() -> str:
    """corral/base's layers as overlayfs lower dirs (top first), as corral mounts them."""
    image = ImageStore(IMAGES.parent).resolve("corral/base")
    return ":".join(str(p) for p in ImageStore(IMAGES.parent).layer_paths(image))


def runsc(root: Path, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return sh([RUNSC, "--root", str(root), *RUNSC_FLAGS, *args], check=check, input=input)


def raw_spec(
    sandbox_id: str, rootfs: Path, netns: Path, argv: Sequence[str], agent_bundle: Path | None = None
) -> dict[str, Any]:
    """The OCI spec corral writes (``OciRuntime._oci_config``), with ``argv`` as init.

    The agent bundle is mounted at ``/.corral`` only when given (a sandbox
    whose init is corral's agent, without corral's server).
    """
    agent_mount = {"destination": MOUNT_POINT, "type": "bind", "source": str(agent_bundle), "options": ["rbind", "ro"]}
    memory = 512 << 20  # corral's default sandbox: 1 vCPU, 512 MiB
    return {
        "ociVersion": "1.0.2",
        "hostname": sandbox_id,
        "root": {"path": str(rootfs), "readonly": False},
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(argv),
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: CAPABILITIES for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
            "noNewPrivileges": False,
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["newinstance"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["mode=1777"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/tmp", "type": "bind", "source": str(rootfs / "tmp"), "options": ["rbind", "rw"]},
            *([agent_mount] if agent_bundle else []),
        ],
        "linux": {
            "cgroupsPath": f"/corral-bench/{sandbox_id}",
            "resources": {
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": 100_000, "period": 100_000},
                "pids": {"limit": 4608},
            },
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": str(netns)},
            ],
        },
    }


@dataclass
class RawSandbox:
    """One sandbox made by hand; each step separate so that it can be timed."""

    id: str
    dir: Path
    state_root: Path
    slot: int
    argv: tuple[str, ...] = ("/bin/sleep", "infinity")
    agent_bundle: Path | None = None
    started: bool = False

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def netns(self) -> str:
        return f"corral-bench-{self.id}"

    @property
    def addresses(self) -> tuple[str, str]:
        base = ipaddress.ip_network(RAW_SUBNET).network_address + 4 * self.slot
        return str(base + 1), str(base + 2)

    @property
    def host_iface(self) -> str:
        return f"cbr{int(ipaddress.ip_address(self.addresses[0])):08x}"

    @property
    def agent_url(self) -> str:
        return f"http://{self.addresses[1]}:{AGENT_PORT}"

    def prepare(self) -> None:
        """The overlay rootfs, the namespace and its veth link, the bundle: what corral does before ``run``."""
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (upper, work, self.rootfs, self.dir / "bundle"):
            d.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={base_lowerdir()},upperdir={upper},workdir={work}"
        sh(["mount", "-t", "overlay", "overlay", "-o", options, str(self.rootfs)])
        (self.rootfs / "tmp").mkdir(exist_ok=True)
        host, inside = self.addresses
        sh(["ip", "netns", "add", self.netns])
        sh(
            ["ip", "-batch", "-"],
            input=(
                f"link add {self.host_iface} type veth peer name eth0 netns {self.netns}\n"
                f"addr add {host}/30 dev {self.host_iface}\nlink set {self.host_iface} up\n"
            ).encode(),
        )
        sh(
            ["ip", "-n", self.netns, "-batch", "-"],
            input=(
                f"link set lo up\naddr add {inside}/30 dev eth0\nlink set eth0 up\nroute add default via {host}\n"
            ).encode(),
        )
        spec = raw_spec(self.id, self.rootfs, NETNS_DIR / self.netns, self.argv, self.agent_bundle)
        (self.dir / "bundle" / "config.json").write_text(json.dumps(spec))

    def run(self) -> None:
        """``runsc run -detach``, in a mount namespace whose ``/proc/sys/net`` is hidden."""
        self._start("run")

    def checkpoint(self, dest: Path) -> None:
        """What corral's snapshot does: freeze, ``runsc checkpoint --leave-running``, copy the upper dir, thaw."""
        runsc(self.state_root, "pause", self.id)
        try:
            runsc(
                self.state_root,
                "checkpoint",
                f"--compression={CHECKPOINT_COMPRESSION}",
                "--leave-running",
                "--image-path",
                str(dest / "memory"),
                self.id,
            )
            sh(["cp", "-a", "--reflink=auto", str(self.dir / "upper"), str(dest / "upper")])
        finally:
            runsc(self.state_root, "resume", self.id, check=False)

    def restore(self, snapshot: Path) -> None:
        """``runsc restore -detach`` of a :meth:`checkpoint` into this (prepared) sandbox."""
        self._start("restore", "--image-path", str(snapshot / "memory"))

    def _start(self, command: str, *options: str) -> None:
        argv = [RUNSC, "--root", str(self.state_root), *RUNSC_FLAGS]
        argv += [command, "-detach", *options, "--bundle", str(self.dir / "bundle"), self.id]
        self.started = True
        # A detached runsc keeps the stdio it is given: a file, never a pipe we would wait on.
        with (self.dir / "console.log").open("ab") as console:
            code = subprocess.run(
                ["unshare", "-m", "sh", "-c", HIDE_PROC_SYS_NET, *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                check=False,
            ).returncode
        if code != 0:
            raise RuntimeError(f"runsc {command} {self.id} failed ({code}): {self.console()[-2000:]}")

    def exec(self, *argv: str, input: bytes | None = None) -> bytes:
        """``runsc exec`` to its end (``input`` as its stdin); its stdout."""
        return runsc(self.state_root, "exec", self.id, *argv, input=input).stdout

    def console(self) -> str:
        path = self.dir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        """Undo everything :meth:`prepare` and :meth:`run` did; safe on a half-made sandbox."""
        if self.started:
            runsc(self.state_root, "kill", "--all", self.id, "KILL", check=False)
            runsc(self.state_root, "delete", "--force", self.id, check=False)
        unmount(self.rootfs / "tmp")
        unmount(self.rootfs)
        sh(["ip", "link", "del", self.host_iface], check=False)
        if (NETNS_DIR / self.netns).exists():
            sh(["ip", "netns", "del", self.netns], check=False)
        if not is_mount(self.rootfs):
            shutil.rmtree(self.dir, ignore_errors=True)


class RawRunsc:
    """Makes raw sandboxes under a temporary ``--root`` and removes them all on close."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="corral-bench-raw-"))
        self.state_root = self.work / "state"
        self.state_root.mkdir()
        self.live: dict[str, RawSandbox] = {}
        self._next = 0
        self._agent_bundle: Path | None = None
        self._lock = threading.Lock()

    def new(self, *, agent: bool = False) -> RawSandbox:
        """A sandbox not yet prepared (so each step can be timed); it is removed on close.

        Its init is ``/bin/sleep infinity``, or with ``agent`` corral's own
        agent, started as corral starts it (its bundle built here, once).
        """
        with self._lock:  # threads may make sandboxes at once
            slot, self._next = self._next, self._next + 1
            # Ids of one width: in a burst runsc once took raw-1 for a prefix of raw-11 and raw-12.
            sandbox_id = f"raw{os.getpid()}-{slot:05d}"
            sbx = RawSandbox(sandbox_id, self.work / sandbox_id, self.state_root, slot)
            if agent:
                if self._agent_bundle is None:
                    self._agent_bundle = build_agent_bundle(self.work / "agent")
                sbx.argv, sbx.agent_bundle = tuple(agent_command(AGENT_PORT)), self._agent_bundle
            self.live[sandbox_id] = sbx
        return sbx

    def start(self, *, agent: bool = False) -> RawSandbox:
        """A running sandbox (with ``agent``, its agent perhaps not answering yet)."""
        sbx = self.new(agent=agent)
        sbx.prepare()
        sbx.run()
        return sbx

    def destroy(self, sbx: RawSandbox) -> None:
        with uninterrupted():
            sbx.destroy()
            self.live.pop(sbx.id, None)

    def destroy_many(self, boxes: Sequence[RawSandbox]) -> None:
        """Destroy these, several at once; a failure is printed, never hidden."""
        for sbx, outcome in zip(boxes, in_threads(self.destroy, boxes, workers=8), strict=True):
            if isinstance(outcome, Exception):
                print(f"could not destroy raw sandbox {sbx.id}: {outcome!r}", file=sys.stderr)

    def close(self) -> None:
        with uninterrupted():
            for sbx in list(self.live.values()):
                with contextlib.suppress(Exception):
                    sbx.destroy()
                self.live.pop(sbx.id, None)
            for controller in Path("/sys/fs/cgroup").iterdir():
                with contextlib.suppress(OSError):
                    (controller / "corral-bench").rmdir()  # only if no other run still uses it
            if not any(is_mount(p) for p in self.work.glob("*/rootfs")):
                shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> RawRunsc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- talking to an agent directly ----------------------------------------------


class AgentCaller:
    """Synchronous calls to sandboxes' agents over envd's protocol (:class:`AgentClient`), one event loop."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))

    def run(self, agent_url: str, argv: Sequence[str], *, user: str | None = None) -> tuple[int | None, bytes]:
        """``process.Process/Start`` of ``argv`` (as the agent's default user, or ``user``) to its end.

        Answers its exit code and stdout.
        """

        async def call() -> tuple[int | None, bytes]:
            code, out = None, b""
            async for event in AgentClient(agent_url, http=self._http).start(list(argv), user=user):
                if event.kind == "stdout":
                    out += event.data
                elif event.kind == "end":
                    code = event.exit_code
            return code, out

        return self._runner.run(call())

    def wait_healthy(self, agent_url: str, timeout: float = 20.0) -> None:
        """Poll ``GET /health`` until it answers, as the server does after ``runsc run``."""
        client = AgentClient(agent_url, http=self._http)
        deadline = time.monotonic() + timeout
        while not self._runner.run(client.health()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent at {agent_url} did not answer within {timeout:g}s")
            time.sleep(0.002)

    def health(self, agent_url: str) -> None:
        """One ``GET /health``; raises unless it answers 2xx."""
        self._runner.run(self._http.get(f"{agent_url}/health")).raise_for_status()

    def close(self) -> None:
        self._runner.run(self._http.aclose())
        self._runner.close()

    def __enter__(self) -> AgentCaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
