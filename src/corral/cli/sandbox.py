"""``corral sandbox ...``: create, list, inspect, kill, pause, hibernate and fork sandboxes, read their logs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from corral.cli._common import (
    JsonOption,
    cli_errors,
    connection,
    console,
    format_pairs,
    parse_pairs,
    print_fields,
    print_json,
    table,
    when,
)
from corral.sdk import Sandbox, SandboxInfo

app = typer.Typer(help="Create, list, inspect and kill sandboxes.", no_args_is_help=True)

PairsOption = Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Repeatable.")]
ModeOption = Annotated[
    str | None, typer.Option("--network-mode", help="Egress: none, allowlist or public_only (the default).")
]
CidrOption = Annotated[list[str] | None, typer.Option("--allow-cidr", help="Reachable IPv4 network; repeatable.")]
DomainOption = Annotated[
    list[str] | None, typer.Option("--allow-domain", help="Reachable name (or *.name); repeatable.")
]
HostPortOption = Annotated[
    list[int] | None, typer.Option("--allow-host", help="Host TCP port reachable at the gateway; repeatable.")
]
LanOption = Annotated[bool, typer.Option("--allow-lan", help="Let it reach private ranges (RFC 1918, CGNAT).")]
PublicOption = Annotated[bool, typer.Option("--public-previews", help="Preview URLs need no token.")]
IdArgument = Annotated[str, typer.Argument(help="The sandbox's id.")]


@app.command()
def create(
    ctx: typer.Context,
    image: Annotated[
        str | None, typer.Option(help="Image (pulled if need be); default: the server's (corral/base).")
    ] = None,
    template: Annotated[str | None, typer.Option(help="Start from this template (and wait until it is ready).")] = None,
    vcpus: Annotated[int | None, typer.Option(help="Virtual CPUs.")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory limit in MiB.")] = None,
    disk_mb: Annotated[int | None, typer.Option(help="Disk size in MiB; default: the server's.")] = None,
    timeout: Annotated[
        int | None, typer.Option(help="Seconds until it is killed (0: never); default: the server's.")
    ] = None,
    snapshot: Annotated[
        str | None, typer.Option(help="Restore this snapshot: its processes, memory and files (`corral snapshot`).")
    ] = None,
    on_timeout: Annotated[
        str | None, typer.Option(help="At its timeout: kill (the default) or pause.", metavar="kill|pause")
    ] = None,
    auto_pause: Annotated[
        int | None, typer.Option(help="Hibernate it after this many seconds without requests (it wakes on the next).")
    ] = None,
    env: PairsOption = None,
    metadata: PairsOption = None,
    publish: Annotated[
        list[str] | None,
        typer.Option(metavar="HOST_PORT:PORT", help="Forward a host port to a port in it; repeatable."),
    ] = None,
    auto_publish: Annotated[bool, typer.Option(help="Publish every port it listens on, on the same number.")] = False,
    network_mode: ModeOption = None,
    allow_cidr: CidrOption = None,
    allow_domain: DomainOption = None,
    allow_host: HostPortOption = None,
    allow_lan: LanOption = False,
    public_previews: PublicOption = False,
    json: JsonOption = False,
) -> None:
    """Create a sandbox and print its id."""
    conn = connection(ctx)
    envs, labels = parse_pairs(env, "--env"), parse_pairs(metadata, "--metadata")
    policy = _policy(network_mode, allow_cidr, allow_domain, allow_host, allow_lan, public_previews)
    with cli_errors():
        sbx = Sandbox.create(
            image,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            envs=envs or None,
            metadata=labels or None,
            timeout=timeout,
            template=template,
            snapshot=snapshot,
            on_timeout=on_timeout,
            auto_pause=auto_pause,
            network=policy,
            publish=publish or None,
            auto_publish=auto_publish or None,
            url=conn.url,
            api_key=conn.api_key,
        )
        sbx.close()
    if json:
        print_json(sbx.last_info.to_json())
    else:
        typer.echo(sbx.id)


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only those in this state (e.g. running).")] = None,
    metadata: PairsOption = None,
    json: JsonOption = False,
) -> None:
    """List sandboxes, filtered by state and metadata (every pair must match)."""
    conn = connection(ctx)
    labels = parse_pairs(metadata, "--metadata")
    with cli_errors():
        found = Sandbox.list(state=state, metadata=labels or None, url=conn.url, api_key=conn.api_key)
    if json:
        print_json({"sandboxes": [s.to_json() for s in found]})
        return
    rows = table(box=None)
    for column in ("ID", "IMAGE", "STATE", "VCPUS", "MEMORY", "CREATED", "ENDS"):
        rows.add_column(column, no_wrap=True)
    rows.add_column("METADATA", overflow="fold")
    for s in found:
        rows.add_row(
            s.id,
            s.image,
            s.state,
            str(s.vcpus),
            f"{s.memory_mb} MiB",
            when(s.created_at),
            _ends(s),
            format_pairs(s.metadata),
        )
    console().print(rows)


def _ends(info: SandboxInfo) -> str:
    """When it ends: a time, or, paused or hibernated, what its clock has left (``-``: never)."""
    if info.ends_at is None and info.remaining is not None:
        return f"{info.remaining:.0f}s after resume"
    return when(info.ends_at)


@app.command()
def info(ctx: typer.Context, sandbox_id: IdArgument, json: JsonOption = False) -> None:
    """Show a sandbox."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        found = sbx.info()
    if json:
        print_json(found.to_json())
    else:
        print_fields(found.to_json())


@app.command()
def kill(ctx: typer.Context, sandbox_id: IdArgument, json: JsonOption = False) -> None:
    """Kill a sandbox."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        sbx.kill()
    if json:
        print_json({"id": sandbox_id, "killed": True})
    else:
        typer.echo(f"killed {sandbox_id}")


@app.command()
def pause(ctx: typer.Context, sandbox_id: IdArgument, json: JsonOption = False) -> None:
    """Freeze a sandbox, memory kept (any later command on it resumes it)."""
    _lifecycle(ctx, sandbox_id, "pause", json)


@app.command()
def resume(ctx: typer.Context, sandbox_id: IdArgument, json: JsonOption = False) -> None:
    """Thaw a paused sandbox (or wake a hibernated one)."""
    _lifecycle(ctx, sandbox_id, "resume", json)


@app.command()
def hibernate(ctx: typer.Context, sandbox_id: IdArgument, json: JsonOption = False) -> None:
    """Save a sandbox to disk and free its memory (any later command on it wakes it)."""
    _lifecycle(ctx, sandbox_id, "hibernate", json)


def _lifecycle(ctx: typer.Context, sandbox_id: str, action: str, json: bool) -> None:
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        info = getattr(sbx, action)()  # pause, resume or hibernate
    if json:
        print_json(info.to_json())
    else:
        typer.echo(f"{sandbox_id} is {info.state}")


@app.command("timeout")
def set_timeout(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    seconds: Annotated[int, typer.Argument(help="Seconds from now (0: never).", min=0)],
    json: JsonOption = False,
) -> None:
    """Set when a sandbox ends: SECONDS from now, or never (0)."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        info = sbx.set_timeout(seconds or None)
    if json:
        print_json(info.to_json())
    else:
        typer.echo(f"{sandbox_id}: {_ends(info) if info.ends_at or info.remaining is not None else 'no timeout'}")


@app.command()
def fork(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    count: Annotated[int, typer.Option("--count", "-n", help="How many copies.", min=1)] = 1,
    metadata: PairsOption = None,
    timeout: Annotated[
        int | None, typer.Option(help="The copies' lifetime in seconds (0: none); default: the server's.")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Copy a sandbox (processes, memory, files) COUNT times; it is left as it was. Prints the copies' ids."""
    labels = parse_pairs(metadata, "--metadata")
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        copies = sbx.fork(count, metadata=labels or None, timeout=timeout)
        for copy in copies:
            copy.close()
    if json:
        print_json({"sandboxes": [copy.last_info.to_json() for copy in copies]})
    else:
        for copy in copies:
            typer.echo(copy.id)


def _policy(
    mode: str | None,
    cidrs: list[str] | None,
    domains: list[str] | None,
    host_ports: list[int] | None,
    lan: bool,
    public: bool,
) -> dict[str, Any] | None:
    """The ``network`` object the options describe; None when none was given (the server's default)."""
    given: dict[str, object] = {
        "mode": mode,
        "allow_cidrs": cidrs or None,
        "allow_domains": domains or None,
        "allow_host": host_ports or None,
        "allow_lan": lan or None,
        "previews": "public" if public else None,
    }
    policy: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    return policy or None


@app.command()
def network(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    network_mode: ModeOption = None,
    allow_cidr: CidrOption = None,
    allow_domain: DomainOption = None,
    allow_host: HostPortOption = None,
    allow_lan: LanOption = False,
    public_previews: PublicOption = False,
    json: JsonOption = False,
) -> None:
    """Replace a sandbox's egress policy (what is not given takes its default)."""
    policy = _policy(network_mode, allow_cidr, allow_domain, allow_host, allow_lan, public_previews) or {}
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        found = sbx.set_network(**policy)
    if json:
        print_json(found.to_json())
    else:
        typer.echo(f"{sandbox_id}: egress {found.network['mode'] if found.network else 'none'}")


@app.command()
def publish(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    ports: Annotated[str, typer.Argument(metavar="HOST_PORT:PORT", help="Or PORT: the same number on the host.")],
    json: JsonOption = False,
) -> None:
    """Forward a host port (on the server's address) to a port in the sandbox."""
    host, _, inner = ports.partition(":")
    if not (host.isdigit() and (inner or host).isdigit()):
        raise typer.BadParameter(f"{ports!r} is not HOST_PORT:PORT such as 8080:3000")
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        made = sbx.publish(int(inner or host), host_port=int(host))
    if json:
        print_json(made.to_json())
    else:
        typer.echo(f"127.0.0.1:{made.host_port} -> {sandbox_id}:{made.port}")


@app.command()
def unpublish(
    ctx: typer.Context, sandbox_id: IdArgument, host_port: Annotated[int, typer.Argument(help="The host port.")]
) -> None:
    """Stop forwarding a host port."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        sbx.unpublish(host_port)
    typer.echo(f"unpublished {host_port}")


@app.command()
def preview(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    port: Annotated[int, typer.Argument(help="The port in the sandbox.")],
    json: JsonOption = False,
) -> None:
    """Print a browser link to a port in the sandbox (with its access token)."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        link = sbx.get_preview_url(port, with_token=True)
        token = sbx.preview_token
    if json:
        print_json({"url": link, "host": link.split("/")[2], "token": token})
    else:
        typer.echo(link)


@app.command()
def logs(
    ctx: typer.Context,
    sandbox_id: IdArgument,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    json: JsonOption = False,
) -> None:
    """Print a sandbox's console: its agent's and the runtime's log."""
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        text = sbx.logs(tail=tail)
    if json:
        print_json({"id": sandbox_id, "logs": text})
    else:
        typer.echo(text, nl=not text.endswith("\n"))
