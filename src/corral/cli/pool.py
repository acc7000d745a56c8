"""``corral pool ...``: warm pools of started sandboxes, per image or template, sized at runtime."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli._common import JsonOption, cli_errors, connection, console, print_json, table
from corral.sdk import Pools

app = typer.Typer(
    help="Keep sandboxes of an image or template started ahead, for instant creates.", no_args_is_help=True
)

KeyArgument = Annotated[str, typer.Argument(help="image:<name> (e.g. image:corral/base) or template:<name>.")]


def _pools(ctx: typer.Context) -> Pools:
    conn = connection(ctx)
    return Pools(url=conn.url, api_key=conn.api_key)


@app.command("list")
def list_(ctx: typer.Context, json: JsonOption = False) -> None:
    """Every pool: its size, the sandboxes waiting in it, and the creates it served (hits) or not (misses)."""
    with cli_errors(), _pools(ctx) as pools:
        found = pools.list()
    if json:
        print_json({"pools": [p.to_json() for p in found]})
        return
    rows = table(box=None)
    for column in ("KEY", "SIZE", "READY", "HITS", "MISSES"):
        rows.add_column(column, no_wrap=True)
    failing = any(p.error for p in found)
    if failing:
        rows.add_column("ERROR")  # why a pool cannot start a sandbox
    for p in found:
        cells = [p.key, str(p.size), str(p.ready), str(p.hits), str(p.misses)]
        rows.add_row(*cells, *([p.error or ""] if failing else []))
    console().print(rows)


@app.command("set")
def set_(
    ctx: typer.Context,
    key: KeyArgument,
    size: Annotated[int, typer.Argument(help="Sandboxes to keep started (0 empties the pool).", min=0)],
    json: JsonOption = False,
) -> None:
    """Keep SIZE sandboxes of KEY started; the pool fills in the background."""
    with cli_errors(), _pools(ctx) as pools:
        pool = pools.set(key, size)
    if json:
        print_json(pool.to_json())
    else:
        typer.echo(f"{pool.key}: size {pool.size}, {pool.ready} ready")


@app.command()
def rm(ctx: typer.Context, keys: Annotated[list[str], typer.Argument(help="Pool keys.")]) -> None:
    """Delete pools; the sandboxes waiting in them are killed."""
    with cli_errors(), _pools(ctx) as pools:
        for key in keys:
            pools.delete(key)
            typer.echo(f"deleted {key}")
