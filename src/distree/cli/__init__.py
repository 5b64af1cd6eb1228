"""The ``distree`` command line: typed subcommands that only wire library calls together.

Owns argument parsing, progress bars and printing; no logic of its own. May import every other
package, but only inside the commands: ``distree --help`` and ``distree --version`` import no
torch, numpy or grpc.
"""

from __future__ import annotations

import logging

import typer

from ._common import DistreeGroup

app = typer.Typer(
    cls=DistreeGroup,
    name="distree",
    help="Distributed early-exit inference: train → trace → calibrate → evaluate / simulate / serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"distree {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# Each module registers its subcommands on ``app``.
from . import calibrate as _calibrate  # noqa: E402,F401
from . import cluster as _cluster  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401
from . import deploy as _deploy  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import export as _export  # noqa: E402,F401
from . import netem as _netem  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
from . import simulate as _simulate  # noqa: E402,F401
from . import status as _status  # noqa: E402,F401
from . import trace as _trace  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401


def main() -> None:
    app()
