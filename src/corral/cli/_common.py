"""What every ``corral`` command shares: connection options, output, and errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from corral.errors import CorralError
from corral.sdk import Sandbox

if TYPE_CHECKING:
    # rich is imported by the commands that draw with it, not by every start:
    # `corral exec`, the one run in loops, draws nothing.
    from rich.console import Console
    from rich.table import Table

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of text.")]


@dataclass(frozen=True)
class Connection:
    """The global ``--url`` / ``--api-key``; ``None`` lets the SDK read the environment."""

    url: str | None = None
    api_key: str | None = None

    def sandbox(self, sandbox_id: str) -> closing[Sandbox]:
        """Attach to a sandbox for the length of a ``with`` (which closes, not kills, it).

        A paused sandbox stays paused: commands that need it running resume it by using it.
        """
        return closing(Sandbox.connect(sandbox_id, resume=False, url=self.url, api_key=self.api_key))


def connection(ctx: typer.Context) -> Connection:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Connection) else Connection()


def fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    """Print one ``error: <code>: <message>`` line to stderr and exit."""
    typer.echo(f"error: {code}: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn corral's errors (and local I/O errors) into one line on stderr and exit 1."""
    try:
        yield
    except CorralError as exc:
        fail(exc.code, exc.message)
    except OSError as exc:
        fail("local_io", str(exc))


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; a value may itself hold ``=``."""
    pairs: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        pairs[key] = value
    return pairs


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def console() -> Console:
    """A rich console on the current stdout (so tests capture it).

    Piped into another program, tables keep their natural width instead of
    being squeezed into 80 columns.
    """
    from rich.console import Console

    out = Console(file=sys.stdout, highlight=False)
    if not out.is_terminal:
        out = Console(file=sys.stdout, highlight=False, width=max(out.width, 250))
    return out


def err_console(**options: Any) -> Console:
    """A rich console on stderr: progress and messages beside a command's output."""
    from rich.console import Console

    return Console(stderr=True, **options)


def table(*headers: str, **options: Any) -> Table:
    from rich.table import Table

    return Table(*headers, **options)


def format_pairs(values: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def print_fields(data: Mapping[str, Any]) -> None:
    """An API object as two columns, name and value (``-`` for none; mappings as ``k=v,...``; seconds to 0.1)."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    for key, value in data.items():
        shown = format_pairs(value) if isinstance(value, dict) else value
        shown = f"{shown:.1f}" if isinstance(shown, float) else shown
        grid.add_row(key, "-" if shown is None or shown == "" else str(shown))
    console().print(grid)


def human_size(n: int) -> str:
    """``1536`` as ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def when(value: datetime | None) -> str:
    """A time as ``2026-12-07 01:33:21`` (``-`` for none)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
