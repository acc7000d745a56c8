"""``corral``: the command line.

    corral sandbox create | list | info | kill | logs | pause | resume | hibernate | timeout | fork
    corral snapshot create | list | info | rm    (restore: corral sandbox create --snapshot ID)
    corral pool list | set | rm
    corral exec ID -- cmd args...
    corral cp SRC DST            (ID:/path in a sandbox, a local path, or -)
    corral serve
    corral image pull | list | inspect | rm | gc | build-base
    corral template build | list | get | rm

Every command talks to the server through the SDK; ``--url``/``--api-key``
(or ``CORRAL_URL``/``CORRAL_API_KEY``) say which. Errors are one line on
stderr, ``error: <code>: <message>``, and exit status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral._version import __version__
from corral.cli import image, pool, run, sandbox, snapshot, template
from corral.cli._common import Connection

app = typer.Typer(
    name="corral",
    help="Self-hosted sandboxes for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(pool.app, name="pool")
app.add_typer(image.app, name="image")
app.add_typer(template.app, name="template")
app.command("exec")(run.exec_)
app.command("cp")(run.cp)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(envvar="CORRAL_URL", help="The server's URL.", show_default="http://127.0.0.1:7423"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="CORRAL_API_KEY", help="The server's API key.", show_default=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = Connection(url=url, api_key=api_key)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (CORRAL_HOST).", show_default="127.0.0.1")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (CORRAL_PORT).", show_default="7423")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where state, images and disks live (CORRAL_DATA_DIR).", show_default=False),
    ] = None,
) -> None:
    """Run the corral server."""
    from corral.errors import CorralError
    from corral.server.serve import run_server

    try:
        run_server(host=host, port=port, data_dir=data_dir)
    except CorralError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
