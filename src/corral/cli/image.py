"""``corral image``: the local image store (on the server's machine, as root)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Images in the local store (run on the server's machine).", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option(help="The server's data dir (CORRAL_DATA_DIR).", show_default="/var/lib/corral")
]


def _data_dir(given: Path | None) -> Path:
    return given or Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))


@app.command("build-base")
def build_base(
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if it is there.")] = False,
) -> None:
    """Build the default image, corral/base, from Debian packages (once; about a minute)."""
    from corral.errors import CorralError
    from corral.images.base import BASE_IMAGE, build_base_image
    from corral.images.store import ImageStore

    console = Console(stderr=True)
    store = ImageStore(_data_dir(data_dir))
    if not force and any(image.name == BASE_IMAGE for image in store.list()):
        console.print(f"{BASE_IMAGE} is already built")
        return
    with console.status(f"building {BASE_IMAGE} with debootstrap...") as status:

        def progress(line: str) -> None:
            status.update(f"building {BASE_IMAGE}: [dim]{line[:100]}[/dim]")

        try:
            rootfs = build_base_image(_data_dir(data_dir), force=force, on_line=progress)
        except CorralError as exc:
            console.print(f"[red]error:[/red] {exc.code}: {exc.message}")
            for line in str(exc.details.get("output", "")).splitlines()[-10:]:
                console.print(f"  {line}")
            raise typer.Exit(1) from None
    console.print(f"{BASE_IMAGE} built: {rootfs}")


@app.command("list")
def list_images(data_dir: DataDir = None) -> None:
    """Images in the local store."""
    from corral.images.store import ImageStore

    table = Table("name", "rootfs")
    for image in ImageStore(_data_dir(data_dir)).list():
        table.add_row(image.name, str(image.rootfs))
    Console().print(table)
