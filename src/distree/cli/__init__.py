"""The ``distree`` command line: typed subcommands that only wire library calls together."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="distree",
    help="Distributed early-exit inference: train → trace → calibrate → evaluate / simulate / serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# Each module registers its subcommands on ``app``.
from . import calibrate as _calibrate  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import export as _export  # noqa: E402,F401
from . import netem as _netem  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
from . import simulate as _simulate  # noqa: E402,F401
from . import trace as _trace  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401


def main() -> None:
    app()
