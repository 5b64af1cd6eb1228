"""Exit traces: record once, score any policy offline or in the simulator.

Owns the trace file format (:mod:`.format`: numpy + safetensors; needs :mod:`distree.models.cost`
only) and recording a trace from a checkpoint (:mod:`.record`: torch, :mod:`distree.checkpoint`,
:mod:`distree.data`), which is imported on first use of ``record_trace`` / ``trace_checkpoint``.
"""

from .format import FORMAT, Trace, TraceError, load_trace

__all__ = ["FORMAT", "Trace", "TraceError", "load_trace", "record_trace", "trace_checkpoint"]


def __getattr__(name: str):  # recording needs torch; the format does not
    if name in ("record_trace", "trace_checkpoint"):
        from . import record

        return getattr(record, name)
    raise AttributeError(name)
