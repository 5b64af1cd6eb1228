"""Running ``ip`` / ``tc`` and entering namespaces from Python threads."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from ._forwarder import enter_netns

log = logging.getLogger(__name__)
T = TypeVar("T")

# iproute2 lives in /usr/sbin or /sbin, which may be missing from a non-login PATH
_EXTRA_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"


class NetemError(RuntimeError):
    """A namespace, link or qdisc operation failed; the message names the command and the kernel's answer."""


class NetemUnavailable(NetemError):
    """This machine cannot do what was asked (no permission, missing tool or kernel feature)."""


def which(tool: str) -> str | None:
    import os

    return shutil.which(tool) or shutil.which(tool, path=os.environ.get("PATH", "") + ":" + _EXTRA_PATH)


def tool(name: str) -> str:
    path = which(name)
    if path is None:
        raise NetemUnavailable(
            f"`{name}` (iproute2) is not installed; install iproute2 (e.g. apt-get install iproute2)"
        )
    return path


def run(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run a command (``argv[0]`` is ``ip`` or ``tc``); raise :class:`NetemError` with its stderr on failure."""
    full = [tool(argv[0]), *argv[1:]] if argv[0] in ("ip", "tc") else list(argv)
    log.debug("run: %s", " ".join(full))
    p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip() or f"exit status {p.returncode}"
        raise NetemError(f"`{' '.join(argv)}` failed: {msg}")
    return p


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a short-lived thread that has entered network namespace ``ns``.

    Sockets (and ``/proc/sys/net`` files) opened by ``fn`` belong to that namespace and stay usable
    from any thread afterwards. The calling thread's namespace is untouched.
    """
    box: dict[str, object] = {}

    def body() -> None:
        try:
            enter_netns(ns)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
