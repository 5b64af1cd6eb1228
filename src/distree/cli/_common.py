"""Helpers shared by CLI commands: error reporting and progress bars.

Library text (messages, names, paths, policy parameters) is never read as rich markup: both
consoles have markup off, so ``[workload]`` or ``[inf, inf]`` print as they are. Styling is
given explicitly (``style=``, :class:`rich.text.Text`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperGroup

from ..errors import DistreeError

if TYPE_CHECKING:
    # the base Context that typer's groups declare in invoke() and are called with: typer's vendored click
    from typer._click import Context as ClickContext

console = Console(markup=False)
err_console = Console(stderr=True, markup=False)
T = TypeVar("T")


def error_line(msg: str) -> None:
    """``error: MSG`` on stderr, on one line (no markup, no wrapping)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", " ".join(str(msg).split())), soft_wrap=True)


def fail(msg: str, code: int = 2) -> NoReturn:
    error_line(msg)
    raise typer.Exit(code)


def warn(msg: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", msg), soft_wrap=True)


def guarded(fn: Callable[[], T], *errors: type[BaseException]) -> T:
    """Run ``fn``; turn expected errors into one clear message and a non-zero exit."""
    expected: tuple[type[BaseException], ...] = (DistreeError, ValueError, FileNotFoundError, *errors)
    try:
        return fn()
    except expected as e:
        fail(str(e))
        raise  # unreachable


class DistreeGroup(TyperGroup):
    """The root command group: a :class:`DistreeError` from any command is one line and exit code 2."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except DistreeError as e:
            error_line(str(e))
            raise typer.Exit(2) from None


@contextmanager
def progress_bar(transient: bool = False) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    ) as p:
        try:
            yield p
        except BaseException:
            p.live.transient = True  # a failed step leaves its error line, not a half-drawn bar, last
            raise
