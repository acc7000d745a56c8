"""``corral image``: pull, list, remove and garbage-collect images; build the offline base images.

``build-base`` works on the local store directly (it runs at setup, before
any server); the others go through the server like every other command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from corral.cli._common import JsonOption, cli_errors, connection, console, err_console, human_size, print_json, table
from corral.sdk import ImageInfo, Images, PullProgress

app = typer.Typer(help="Pull, list and remove images; build the offline base images.", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option(help="The server's data dir (CORRAL_DATA_DIR).", show_default="/var/lib/corral")
]
NameArgument = Annotated[str, typer.Argument(help="An image reference: python:3.12, host:5000/x:tag, x@sha256:...")]


def _data_dir(given: Path | None) -> Path:
    return given or Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))


def _images(ctx: typer.Context) -> Images:
    conn = connection(ctx)
    return Images(url=conn.url, api_key=conn.api_key)


@app.command("build-base")
def build_base(
    data_dir: DataDir = None,
    node: Annotated[bool, typer.Option("--node", help="Build corral/node (base + nodejs, npm) too.")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild even if it is there.")] = False,
) -> None:
    """Build corral/base (and with --node corral/node) from Debian packages, once, on the server's machine."""
    from corral.errors import CorralError
    from corral.images.base import BASE_IMAGE, NODE_IMAGE, build_base_image
    from corral.images.store import ImageStore

    err = err_console()
    store = ImageStore(_data_dir(data_dir))
    for name in [BASE_IMAGE, NODE_IMAGE] if node else [BASE_IMAGE]:
        if not force and store.lookup(name) is not None:
            err.print(f"{name} is already built")
            continue
        with err.status(f"building {name} from Debian packages...") as status:

            def progress(line: str, name: str = name) -> None:
                status.update(f"building {name}: [dim]{line[:100]}[/dim]")

            try:
                image = build_base_image(_data_dir(data_dir), name=name, force=force, on_line=progress)
            except CorralError as exc:
                err.print(f"[red]error:[/red] {exc.code}: {exc.message}")
                for line in str(exc.details.get("output", "")).splitlines()[-10:]:
                    err.print(f"  {line}")
                raise typer.Exit(1) from None
        err.print(f"{name} built ({image.id[:12]}, {human_size(image.size)})")


@app.command()
def pull(ctx: typer.Context, name: NameArgument, json: JsonOption = False) -> None:
    """Pull an image into the server's store, with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    err = err_console()
    with (
        cli_errors(),
        _images(ctx) as images,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=json,
        ) as bar,
    ):
        task = bar.add_task(f"resolving {name}", total=None)

        def show(event: PullProgress) -> None:
            bar.update(task, description=f"{event.phase} {name}", completed=event.done, total=event.total or None)

        image = images.pull(name, on_progress=show)
    if json:
        print_json(image.to_json())
    else:
        err.print(f"pulled {name}: {image.id[:12]} ({human_size(image.size)})")


@app.command("list")
def list_images(
    ctx: typer.Context,
    all_images: Annotated[bool, typer.Option("--all", help="Include unnamed images (build cache).")] = False,
    json: JsonOption = False,
) -> None:
    """Images in the server's store."""
    with cli_errors(), _images(ctx) as images:
        found = images.list(all_images=all_images)
    if json:
        print_json([i.to_json() for i in found])
        return
    rows = table("name", "id", "source", "size", "layers", "used by")
    for image in found:
        rows.add_row(_names(image), image.id[:12], image.source, human_size(image.size), str(image.layers),
                     str(len(image.used_by)))  # fmt: skip
    console().print(rows)


@app.command()
def inspect(ctx: typer.Context, name: NameArgument) -> None:
    """One image, as JSON."""
    with cli_errors(), _images(ctx) as images:
        print_json(images.get(name).to_json())


@app.command()
def rm(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Image names.")],
    force: Annotated[bool, typer.Option(help="Remove the name even if sandboxes run on the image.")] = False,
) -> None:
    """Remove images (their data goes when nothing else holds it)."""
    with cli_errors(), _images(ctx) as images:
        for name in names:
            images.remove(name, force=force)
            typer.echo(f"removed {name}")


@app.command()
def gc(ctx: typer.Context, json: JsonOption = False) -> None:
    """Delete unnamed images (build cache too) and layers no sandbox or image uses."""
    with cli_errors(), _images(ctx) as images:
        freed = images.gc()
    if json:
        print_json(freed)
    else:
        typer.echo(f"freed {freed['images']} image(s), {freed['layers']} layer(s), {human_size(freed['bytes'])}")


def _names(image: ImageInfo) -> str:
    return ", ".join(image.names) or "<none>"
