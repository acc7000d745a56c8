"""Exec latency: ``sbx.commands.run("true")`` through the SDK, layer by layer, beside ``runsc exec``.

One corral sandbox (made through the SDK) and one raw runsc sandbox (made by
hand, same flags, ``/bin/sleep infinity`` as init). Each round runs once each,
in turn, after a warm-up:

- ``commands.run("true")``: SDK -> server -> agent, a shell line (``bash -c true``,
  which the agent starts as ``/bin/true`` since it is one simple command);
- ``commands.run(["/bin/true"])``: the same in argv mode (no shell);
- ``commands.run("true && true")``: a line bash must run;
- the agent alone: ``process.Process/Start`` of ``/bin/true`` straight to the
  sandbox's agent at ``http://<address>:49983`` (envd protocol), no server,
  as the default user (as the SDK runs it) and as root (no user switch);
- the floor: ``runsc exec <id> /bin/true`` on the raw sandbox;

and, to tell transport from process start, two round trips that start no
process: ``sbx.info()`` (SDK -> server) and ``GET /health`` of the agent.
Then ``corral exec ID -- true`` through the CLI, a new process each time (as
a shell script calls it), beside ``runsc exec`` again, ``--cli-runs`` rounds.
Last, to tell the network path from the agent's own work, a client inside
the sandbox (``python3`` of the image, on the sandbox's loopback) times
``Start`` of ``/bin/true`` as the default user and ``GET /health``; and, the
runtime's own floor for starting a process, ``python3`` inside the raw
sandbox times ``posix_spawn`` of ``/bin/true`` and its ``waitpid`` (no agent,
no network). A ``commands.run`` cannot take less than that.

    .venv/bin/python bench/exec.py [--runs 200] [--warmup 20] [--cli-runs 30] [--url URL]
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from _common import (
    CORRAL_CLI,
    AgentCaller,
    RawRunsc,
    Row,
    SandboxSet,
    base_parser,
    corral_url,
    ms,
    print_table,
    ratio,
    run_main,
    summary,
    verdict,
    write_json,
)

from corral.runtimes.base import AGENT_PORT

TARGET_P50 = 0.005
"""``commands.run("true")`` p50, at most this many seconds."""

LAYERS = {
    "sdk_shell": 'SDK commands.run("true")',
    "sdk_argv": 'SDK commands.run(["/bin/true"])',
    "sdk_bash": 'SDK commands.run("true && true") (bash runs)',
    "agent": "agent Start /bin/true (no server)",
    "agent_root": "agent Start /bin/true as root",
    "raw": "raw floor: runsc exec /bin/true",
    "sdk_info": "  no process: SDK sbx.info()",
    "agent_health": "  no process: agent GET /health",
}
CLI = {
    "cli": "CLI corral exec ID -- true (a process each)",
    "cli_start": "  no request: corral --version",
    "cli_raw": "  raw floor in the same rounds: runsc exec",
}


INSIDE = {
    "inside_agent": "  inside the sandbox: agent Start /bin/true",
    "inside_health": "  inside the sandbox: agent GET /health",
    "inside_spawn": "  inside a raw sandbox: posix_spawn /bin/true + wait",
}

# Run by the image's python3 in the sandbox: Start and /health over one keep-alive connection on loopback.
INSIDE_CLIENT = r"""
import json, socket, struct, sys, time
runs, port = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port))
body = json.dumps({"process": {"cmd": "/bin/true"}, "stdin": False}).encode()
envelope = struct.pack(">BI", 0, len(body)) + body
start = (
    b"POST /process.Process/Start HTTP/1.1\r\nHost: agent\r\nContent-Type: application/connect+json\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(envelope), envelope)
)
health = b"GET /health HTTP/1.1\r\nHost: agent\r\n\r\n"
def call(request, end):
    sock.sendall(request)
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the agent closed the connection")
        data += chunk
    return data
samples = {"inside_agent": [], "inside_health": []}
for i in range(runs + 10):
    for key, request, end in (("inside_agent", start, b"0\r\n\r\n"), ("inside_health", health, b"\r\n\r\n")):
        t0 = time.perf_counter()
        reply = call(request, end)
        if key == "inside_agent" and b'"exitCode":0' not in reply:
            raise SystemExit(f"/bin/true did not succeed: {reply!r}")
        if i >= 10:
            samples[key].append(time.perf_counter() - t0)
print(json.dumps(samples))
"""


# Run by the image's python3 in the raw sandbox: what starting a process costs under gVisor, nothing else.
INSIDE_SPAWN = r"""
import json, os, sys, time
runs = int(sys.argv[1])
samples = []
for i in range(runs + 10):
    t0 = time.perf_counter()
    os.waitpid(os.posix_spawn("/bin/true", ["/bin/true"], os.environ), 0)
    if i >= 10:
        samples.append(time.perf_counter() - t0)
print(json.dumps({"inside_spawn": samples}))
"""


def timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def measure(url: str, api_key: str | None, runs: int, warmup: int, cli_runs: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {k: [] for k in (*LAYERS, *CLI)}
    with SandboxSet(url, api_key) as sandboxes, RawRunsc() as raw, AgentCaller() as agents:
        sbx = sandboxes.create()
        address = sbx.info().address
        if not address:
            raise RuntimeError(f"sandbox {sbx.id} has no address")
        agent_url = f"http://{address}:{AGENT_PORT}"
        floor = raw.start()

        def agent_true(user: str | None = None) -> None:
            code, _ = agents.run(agent_url, ["/bin/true"], user=user)
            if code != 0:
                raise RuntimeError(f"/bin/true exited {code} through the agent")

        calls: dict[str, Callable[[], object]] = {
            "sdk_shell": lambda: sbx.commands.run("true"),
            "sdk_argv": lambda: sbx.commands.run(["/bin/true"]),
            "sdk_bash": lambda: sbx.commands.run("true && true"),
            "agent": agent_true,
            "agent_root": lambda: agent_true("root"),
            "raw": lambda: floor.exec("/bin/true"),
            "sdk_info": sbx.info,
            "agent_health": lambda: agents.health(agent_url),
        }
        for i in range(warmup + runs):
            for name, call in calls.items():
                elapsed = timed(call)
                if i >= warmup:
                    samples[name].append(elapsed)
            if i >= warmup and (i - warmup + 1) % 50 == 0:
                print(f"  {i - warmup + 1}/{runs} rounds")
        cli = [str(CORRAL_CLI), "--url", url, "exec", sbx.id, "--", "true"]
        env = {**os.environ, **({"CORRAL_API_KEY": api_key} if api_key else {})}
        for i in range(1 + cli_runs):  # the first is a warm-up (the page cache)
            round_ = {
                "cli": timed(lambda: subprocess.run(cli, env=env, stdout=subprocess.DEVNULL, check=True)),
                "cli_start": timed(
                    lambda: subprocess.run([cli[0], "--version"], stdout=subprocess.DEVNULL, check=True)
                ),
                "cli_raw": timed(calls["raw"]),
            }
            for key, elapsed in round_.items():
                if i:
                    samples[key].append(elapsed)
        inside = sbx.commands.run(["python3", "-c", INSIDE_CLIENT, str(runs), str(AGENT_PORT)], timeout=600)
        samples.update(json.loads(inside.stdout))
        samples.update(json.loads(floor.exec("python3", "-c", INSIDE_SPAWN, str(runs))))
    return {"stats": {k: summary(v) for k, v in samples.items()}, "samples": samples}


def report(result: dict[str, Any]) -> dict[str, Any]:
    stats = result["stats"]
    floor = stats["raw"]
    rows = [
        [
            label,
            ms(stats[key]["median"]),
            ms(stats[key]["p99"]),
            ms(stats[key]["min"]),
            f"{ratio(stats[key]['median'], floor['median']):.2f}x",
        ]
        for key, label in {**LAYERS, **INSIDE, **CLI}.items()
        if stats[key]["n"]
    ]
    n = floor["n"]
    print_table(f"exec latency, {n} rounds (ms)", ["", "p50", "p99", "min", "p50 / floor"], rows)
    p50, spawn = stats["sdk_shell"]["median"], stats["inside_spawn"]["median"]
    headline = {
        "sdk_p50_ms": p50 * 1000,
        "sdk_p99_ms": stats["sdk_shell"]["p99"] * 1000,
        "sdk_argv_p50_ms": stats["sdk_argv"]["median"] * 1000,
        "sdk_bash_p50_ms": stats["sdk_bash"]["median"] * 1000,
        "agent_p50_ms": stats["agent"]["median"] * 1000,
        "agent_root_p50_ms": stats["agent_root"]["median"] * 1000,
        "inside_agent_p50_ms": stats["inside_agent"]["median"] * 1000,
        "inside_spawn_p50_ms": spawn * 1000,
        "raw_p50_ms": floor["median"] * 1000,
        "raw_p99_ms": floor["p99"] * 1000,
        "cli_runs": stats["cli"]["n"],
        "cli_p50_ms": stats["cli"]["median"] * 1000,
        "cli_p99_ms": stats["cli"]["p99"] * 1000,
        "cli_raw_p50_ms": stats["cli_raw"]["median"] * 1000,
        "cli_raw_p99_ms": stats["cli_raw"]["p99"] * 1000,
        "ratio_p50": ratio(p50, floor["median"]),
        "target_p50_ms": TARGET_P50 * 1000,
        "met": p50 <= TARGET_P50,
    }
    print_table(
        'commands.run("true") p50 against the target',
        ["", "p50 ms", "target", ""],
        [
            ["SDK", ms(p50), f"<= {ms(TARGET_P50)}", verdict(p50, TARGET_P50)],
            # No exec can be quicker than the process start under it.
            ["process start alone, in gVisor", ms(spawn), f"<= {ms(TARGET_P50)}", verdict(spawn, TARGET_P50)],
        ],
    )
    return headline


def summary_rows(h: dict[str, Any]) -> list[Row]:
    """The lines of ``run_all``'s table."""
    target = f"<= {h['target_p50_ms']:g} ms"
    return [
        Row('exec round trip, SDK commands.run("true"), p50', h["sdk_p50_ms"], h["raw_p50_ms"],
            target=target, met=h["met"]),
        Row('exec round trip, SDK commands.run("true"), p99', h["sdk_p99_ms"], h["raw_p99_ms"]),
        Row(f"exec round trip, CLI corral exec ID -- true (n={h['cli_runs']}), p50",
            h["cli_p50_ms"], h["cli_raw_p50_ms"]),
        Row("exec round trip, CLI, p99", h["cli_p99_ms"], h["cli_raw_p99_ms"]),
    ]  # fmt: skip


def run(url: str | None, api_key: str | None, *, runs: int, warmup: int, cli_runs: int = 30) -> dict[str, Any]:
    with corral_url(url, api_key) as base:
        result = measure(base, api_key, runs, warmup, cli_runs)
    headline = report(result)
    write_json("exec", {"runs": runs, "warmup": warmup, "headline": headline, **result})
    return headline


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="measured rounds (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured rounds first (default 20)")
    parser.add_argument("--cli-runs", type=int, default=30, help="measured rounds through the CLI (default 30)")
    args = parser.parse_args()
    run(args.url, args.api_key, runs=args.runs, warmup=args.warmup, cli_runs=args.cli_runs)
    return 0


if __name__ == "__main__":
    run_main(main)
