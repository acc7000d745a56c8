"""``corral template``: build templates from a Dockerfile subset, list, inspect and delete them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral.cli._common import JsonOption, cli_errors, connection, console, err_console, parse_pairs, print_json, table
from corral.errors import BuildFailed
from corral.sdk import TemplateInfo, Templates

app = typer.Typer(help="Build, list, inspect and delete templates.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(help="The template's name.")]


def _templates(ctx: typer.Context) -> Templates:
    conn = connection(ctx)
    return Templates(url=conn.url, api_key=conn.api_key)


@app.command()
def build(
    ctx: typer.Context,
    context: Annotated[Path, typer.Argument(help="The build context directory (COPY sources).")] = Path("."),
    tag: Annotated[str, typer.Option("--tag", "-t", help="The template's name.")] = "",
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="The Dockerfile; default: CONTEXT/corral.Dockerfile or Dockerfile."),
    ] = None,
    build_arg: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="ARG values; repeatable.")] = None,
    vcpus: Annotated[int | None, typer.Option(help="Default vCPUs of its sandboxes.")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Default memory of its sandboxes, in MiB.")] = None,
    start_cmd: Annotated[str | None, typer.Option(help="Started in the background in each new sandbox.")] = None,
    ready_cmd: Annotated[str | None, typer.Option(help="A sandbox is handed out once this exits 0.")] = None,
    ready_timeout: Annotated[float | None, typer.Option(help="Seconds the readiness check may take.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the build log.")] = False,
    json: JsonOption = False,
) -> None:
    """Build a template; the log streams as the steps run (cached steps are skipped)."""
    if not tag:
        raise typer.BadParameter("name the template with --tag/-t", param_hint="--tag")
    dockerfile = file or next(
        (p for p in (context / "corral.Dockerfile", context / "Dockerfile") if p.exists()), context / "Dockerfile"
    )
    err = err_console(highlight=False)

    def show(line: str) -> None:
        if not quiet and not json:
            err.out(line, highlight=False)

    with cli_errors(), _templates(ctx) as templates:
        try:
            info = templates.build(
                tag, dockerfile_path=dockerfile, context=context, build_args=parse_pairs(build_arg, "--build-arg"),
                vcpus=vcpus, memory_mb=memory_mb, start_cmd=start_cmd, ready_cmd=ready_cmd,
                ready_timeout=ready_timeout, on_log=show,
            )  # fmt: skip
        except BuildFailed as exc:
            if quiet or json:
                err.out(str(exc.details.get("output", "")))
            raise
    if json:
        print_json(info.to_json())
    else:
        err.print(f"template {info.name} is ready: Sandbox.create(template={info.name!r})")


@app.command("list")
def list_templates(ctx: typer.Context, json: JsonOption = False) -> None:
    """Every template and the state of its last build."""
    with cli_errors(), _templates(ctx) as templates:
        found = templates.list()
    if json:
        print_json([t.to_json() for t in found])
        return
    rows = table("name", "state", "image", "built", "start", "ready check")
    for t in found:
        rows.add_row(t.name, _state(t), (t.image_id or "-")[:12], t.built_at.strftime("%Y-%m-%d %H:%M") if t.built_at
                     else "-", t.start_cmd or "-", t.ready_cmd or "-")  # fmt: skip
    console().print(rows)


@app.command()
def get(ctx: typer.Context, name: NameArgument, json: JsonOption = False) -> None:
    """One template, with its recipe and its last build's log."""
    with cli_errors(), _templates(ctx) as templates:
        info = templates.get(name)
    if json:
        print_json(info.to_json())
        return
    out = console()
    out.print(f"[bold]{info.name}[/bold]  {_state(info)}  image {info.image} ({(info.image_id or '-')[:12]})")
    out.print(info.dockerfile.strip())
    if info.build_log:
        out.print("[dim]--- last build ---[/dim]")
        out.out(info.build_log)


@app.command()
def rm(ctx: typer.Context, names: Annotated[list[str], typer.Argument(help="Template names.")]) -> None:
    """Delete templates (their images go at the next `corral image gc`)."""
    with cli_errors(), _templates(ctx) as templates:
        for name in names:
            templates.delete(name)
            typer.echo(f"deleted {name}")


def _state(info: TemplateInfo) -> str:
    return info.state + (f" ({info.error})" if info.error and info.state == "failed" else "")
