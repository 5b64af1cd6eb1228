"""Structured (JSON lines) logging for node processes."""

from __future__ import annotations

import json
import logging
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra={...}`` fields."""

    def __init__(self, static: dict[str, object] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, object] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                d[k] = v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def configure(level: int = logging.INFO, json_lines: bool = True, static: dict[str, object] | None = None) -> None:
    """Route the root logger to stderr, as JSON lines (default) or plain text."""
    h = logging.StreamHandler()
    h.setFormatter(
        JsonFormatter(static) if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)


class RepeatedErrors:
    """Logs an error once per kind, then at its 2nd, 4th, 8th, ... repeat with the count, so a caller
    sending the same bad request in a loop cannot flood the log. A traceback only for errors that are
    not the caller's (anything but ValueError / its subclasses, which name the caller's mistake)."""

    def __init__(self, logger: logging.Logger, what: str, *, event: str) -> None:
        self.logger = logger
        self.what = what
        self.event = event
        self.counts: dict[tuple[str, str], int] = {}

    def log(self, e: BaseException, key: str | None = None) -> int:
        k = (type(e).__name__, key if key is not None else str(e)[:200])
        n = self.counts.get(k, 0) + 1
        if len(self.counts) < 10_000 or k in self.counts:
            self.counts[k] = n
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...
            self.logger.warning(
                "%s: %s: %s%s",
                self.what,
                type(e).__name__,
                e,
                f" ({n} times so far)" if n > 1 else "",
                exc_info=None if isinstance(e, ValueError) else e,
                extra={"event": self.event, "count": n},
            )
        return n
