"""``distree netem``: check what network emulation this machine allows; bring up an emulated chain."""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from . import app
from ._common import console, err_console, fail, guarded

netem_app = typer.Typer(
    help="Network emulation: nodes in network namespaces, chained by shaped links (needs root).",
    no_args_is_help=True,
)
app.add_typer(netem_app, name="netem")


@netem_app.command("check")
def check() -> None:
    """Probe namespaces, veth, netem, tbf and TUN; say which backend would be used (exit 1 if none)."""
    from ..netem import netem_available, probe

    console.print(probe().summary())
    ok, why = netem_available()
    console.print(Text.assemble((f"{'available' if ok else 'not available'}:", "bold"), " ", why))
    if not ok:
        raise typer.Exit(1)


@netem_app.command("up")
def up(
    nodes: int = typer.Option(3, help="Node namespaces behind the client namespace."),
    rate: float | None = typer.Option(None, help="Rate of every link in Mbit/s (default: unlimited)."),
    delay: float = typer.Option(0.0, help="One-way delay of every link in ms (each direction)."),
    jitter: float = typer.Option(0.0, help="Uniform jitter in ms (at most --delay)."),
    loss: float = typer.Option(0.0, help="Packet loss probability per direction, e.g. 0.01."),
    backend: str = typer.Option("auto", help="auto | kernel (veth + tc) | userspace (TUN + emulator)."),
    trace: Path | None = typer.Option(None, help="Bandwidth trace (time_s Mbit/s lines) replayed on every link."),
    time_scale: float = typer.Option(1.0, help="Wall seconds per trace second."),
    duration: float | None = typer.Option(None, help="Seconds to keep the chain up (default: until Ctrl-C)."),
) -> None:
    """Create the chain, print its namespaces and addresses, keep it up, then remove everything."""
    from ..fluctuation import TraceFileError
    from ..netem import NetemError, NetnsChain

    chain = guarded(lambda: NetnsChain(nodes, backend=backend), NetemError)
    try:
        guarded(chain.start, NetemError)
        guarded(lambda: chain.shape_all(rate_mbit=rate, delay_ms=delay, jitter_ms=jitter, loss=loss), NetemError)
        if trace is not None:
            for link in chain.links:
                guarded(partial(link.replay_trace, trace, time_scale=time_scale), NetemError, TraceFileError)
        table = Table(title=f"netem chain ({chain.backend} backend)")
        for col in ("role", "namespace", "address"):
            table.add_column(col)
        for row in chain.describe():
            table.add_row(row["role"], row["namespace"], row["address"])
        console.print(table)
        first = chain.nodes[0]
        console.print(
            f"run a command in node 1:  ip netns exec {first.name} <command>   (node 1 is at {first.address})"
        )
        if duration is None:
            err_console.print("holding the chain; Ctrl-C removes it", style="dim")
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(duration) if duration is not None else _forever()
    finally:
        chain.close()
        err_console.print("chain removed", style="dim")


def _forever() -> None:
    while True:
        time.sleep(3600)


@netem_app.command("clean")
def clean(prefix: str = typer.Option("dt", help="Name prefix of the chains to look for.")) -> None:
    """Delete namespaces left behind by chains whose process died (live chains are left alone)."""
    from ..netem import NetemError, cleanup_stale

    try:
        removed = cleanup_stale(prefix)
    except NetemError as e:
        fail(str(e))
        return
    console.print(f"removed {len(removed)} stale namespace(s)" + (": " + ", ".join(removed) if removed else ""))


@netem_app.command("selftest")
def selftest(
    backend: list[str] = typer.Option(["auto"], help="Backend(s) to measure: auto | kernel | userspace."),
    repeats: int = typer.Option(3, help="Measurements per setting."),
) -> None:
    """Shape a link with known delays and rates; print measured against expected."""
    from ..netem import NetemError
    from ..netem.measure import selftest as run_selftest

    table = Table(title="netem self-test (1 link, TCP)")
    for col in ("backend", "setting", "metric", "expected", "measured", "measured/expected"):
        table.add_column(col, justify="right" if col in ("expected", "measured", "measured/expected") else "left")
    for b in backend:
        for c in guarded(partial(run_selftest, b, repeats=repeats), NetemError, RuntimeError):
            exp = "-" if c.expected != c.expected else f"{c.expected:.3f}"
            ratio = "-" if c.expected != c.expected else f"{c.ratio:.3f}"
            table.add_row(c.backend, c.setting, c.metric, exp, f"{c.measured:.3f}", ratio)
    console.print(table)
