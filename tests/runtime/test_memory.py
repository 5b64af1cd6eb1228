"""Bounded memory of a node under a burst of maximum-size requests (real node processes on loopback).

16 requests of the largest size the node accepts arrive at once; node 1 handles those that fit in its
``max_inflight_bytes`` and refuses the others with RESOURCE_EXHAUSTED before parsing them. Its
resident memory (VmRSS / VmHWM of the node process) rises by at most about twice the cap, and comes
back near where it was once the burst is over. Timing is generous (the test machine is loaded): the
memory is polled for up to 30 s.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime.client import build_request, make_channel
from distree.runtime.kserve import SERVICE
from distree.runtime.limits import INFLIGHT_MESSAGES, derived_message_bytes
from distree.runtime.protos import kserve_v2_pb2 as pb

pytestmark = pytest.mark.xdist_group("memory")

ROWS = 49152  # max_request_batch: a full FP32 batch of 1x8x8 rows is 12.6 MB, a ~16 MB message limit
BURST = 16


def _status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _serving_line(log: Path, timeout_s: float = 30.0) -> dict:
    """The node's JSON log line saying it serves (it comes just after the health status)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if '"serving"' in line:
                rec = json.loads(line)
                if rec.get("event") == "serving":
                    return rec
        time.sleep(0.2)
    raise AssertionError(f"no 'serving' line in {log}")


def test_burst_of_maximum_size_requests_is_bounded_and_memory_comes_back(rt):
    spec = write_spec(rt, "memory", max_request_batch=ROWS)
    with running(spec) as cluster:
        pid = cluster.procs[(1, 1)].pid
        node1 = _serving_line(spec.path.parent / "memory-logs" / "node1.log")
        limit, cap = node1["max_message_bytes"], node1["max_inflight_bytes"]
        shape = rt.images.shape[1:]
        # derived from the model: a full batch of FP32 rows, or the answer with every class as a string
        low, high = (derived_message_bytes(1, shape, rows=ROWS, num_classes=4, label_bytes=n) for n in (0, 32))
        assert low <= limit <= high, (low, limit, high)
        assert cap == INFLIGHT_MESSAGES * limit
        # as large as the limit allows, but malformed: parsed and refused with INVALID_ARGUMENT (or
        # RESOURCE_EXHAUSTED when no room came in time)
        bad = pb.ModelInferRequest(model_name="distree")
        bad.inputs.add(name="INPUT", datatype="FP32", shape=[ROWS + 1, *shape])
        bad.raw_input_contents.append(b"\0" * (limit - 4096))
        assert limit - 8192 < bad.ByteSize() < limit
        x = np.zeros((2, *shape), np.float32)
        with make_channel(spec.nodes[0].address, max_message_bytes=limit) as ch:
            infer = ch.unary_unary(
                f"/{SERVICE}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            assert len(infer(build_request(x), timeout=60).outputs) == 4
            time.sleep(2.0)
            before = _status(pid)["VmRSS"]
            peak_ok = _reset_peak(pid)

            def call(req: pb.ModelInferRequest) -> grpc.StatusCode:
                try:
                    infer(req, timeout=120)
                    return grpc.StatusCode.OK
                except grpc.RpcError as e:
                    return e.code()

            with ThreadPoolExecutor(BURST) as pool:
                codes = list(pool.map(call, [bad] * BURST))
            peak = _status(pid)["VmHWM" if peak_ok else "VmRSS"]
            assert set(codes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert grpc.StatusCode.INVALID_ARGUMENT in codes, codes
            rise = peak - before
            # 16 x 23 MB arrived at once; before, node 1 grew by about twice that and stayed there
            assert rise <= 2 * cap, f"RSS rose by {rise / 1e6:.0f} MB, cap {cap / 1e6:.0f} MB: {codes}"
            # the memory comes back (at once, or by malloc_trim once the node has been idle a moment)
            end = time.monotonic() + 30
            while (after := _status(pid)["VmRSS"]) > before + limit and time.monotonic() < end:
                time.sleep(0.5)
            assert after <= before + limit, f"RSS {before / 1e6:.0f} MB before, {after / 1e6:.0f} MB after"
            assert len(infer(build_request(x), timeout=60).outputs) == 4  # and it still answers
