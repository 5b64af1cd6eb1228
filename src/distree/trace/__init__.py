"""Exit traces: record once, score any policy offline or in the simulator."""

from .format import FORMAT, Trace, TraceError, load_trace

__all__ = ["FORMAT", "Trace", "TraceError", "load_trace", "record_trace", "trace_checkpoint"]


def __getattr__(name: str):  # recording needs torch; the format does not
    if name in ("record_trace", "trace_checkpoint"):
        from . import record

        return getattr(record, name)
    raise AttributeError(name)
