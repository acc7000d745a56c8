"""``corral snapshot ...``: take, list, inspect and delete whole-sandbox snapshots.

A snapshot is restored with ``corral sandbox create --snapshot ID``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._common import (
    JsonOption,
    cli_errors,
    connection,
    console,
    format_pairs,
    human_size,
    parse_pairs,
    print_fields,
    print_json,
    table,
    when,
)
from corral.sdk import Sandbox, SnapshotInfo

app = typer.Typer(
    help="Take, list, inspect and delete snapshots (restore one: corral sandbox create --snapshot ID).",
    no_args_is_help=True,
)

SnapshotArgument = Annotated[str, typer.Argument(help="The snapshot's id.")]


@app.command()
def create(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox to snapshot.")],
    metadata: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Repeatable.")] = None,
    json: JsonOption = False,
) -> None:
    """Save a sandbox's processes, memory and files (it goes on running); prints the snapshot's id."""
    labels = parse_pairs(metadata, "--metadata")
    with cli_errors(), connection(ctx).sandbox(sandbox_id) as sbx:
        snapshot = sbx.snapshot(metadata=labels or None)
    if json:
        print_json(snapshot.to_json())
    else:
        typer.echo(snapshot.id)


@app.command("list")
def list_(
    ctx: typer.Context,
    sandbox: Annotated[str | None, typer.Option(help="Only this sandbox's snapshots.")] = None,
    json: JsonOption = False,
) -> None:
    """Every snapshot (or one sandbox's), oldest first."""
    conn = connection(ctx)
    with cli_errors():
        found = Sandbox.list_snapshots(sandbox, url=conn.url, api_key=conn.api_key)
    if json:
        print_json({"snapshots": [s.to_json() for s in found]})
        return
    rows = table(box=None)
    for column in ("ID", "SANDBOX", "IMAGE", "STATE", "SIZE", "CREATED"):
        rows.add_column(column, no_wrap=True)
    rows.add_column("METADATA", overflow="fold")
    for s in found:
        rows.add_row(
            s.id, s.sandbox_id, s.image, _state(s), human_size(s.size), when(s.created_at), format_pairs(s.metadata)
        )
    console().print(rows)


@app.command()
def info(ctx: typer.Context, snapshot_id: SnapshotArgument, json: JsonOption = False) -> None:
    """Show a snapshot."""
    conn = connection(ctx)
    with cli_errors():
        found = Sandbox.get_snapshot(snapshot_id, url=conn.url, api_key=conn.api_key)
    if json:
        print_json(found.to_json())
        return
    print_fields(found.to_json())


@app.command()
def rm(ctx: typer.Context, snapshot_ids: Annotated[list[str], typer.Argument(help="Snapshot ids.")]) -> None:
    """Delete snapshots (sandboxes restored from them go on)."""
    conn = connection(ctx)
    with cli_errors():
        for snapshot_id in snapshot_ids:
            Sandbox.delete_snapshot(snapshot_id, url=conn.url, api_key=conn.api_key)
            typer.echo(f"deleted {snapshot_id}")


def _state(snapshot: SnapshotInfo) -> str:
    return snapshot.state + (f" ({snapshot.error})" if snapshot.error and snapshot.state == "failed" else "")
