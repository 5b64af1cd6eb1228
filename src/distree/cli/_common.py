"""Helpers shared by CLI commands: error reporting and progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

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

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def fail(msg: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def guarded(fn: Callable[[], T], *errors: type[BaseException]) -> T:
    """Run ``fn``; turn expected errors into one clear message and a non-zero exit."""
    try:
        return fn()
    except (ValueError, FileNotFoundError, *errors) as e:
        fail(str(e))
        raise  # unreachable


@contextmanager
def progress_bar(transient: bool = False) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    ) as p:
        yield p
