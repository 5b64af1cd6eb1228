"""benchmarks/peers.py compares the same work: a torch.distributed.rpc chain and a distree cluster answer
the same inputs alike, and every process the benchmark starts is gone afterwards."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench-peers")]


def _peers() -> ModuleType:
    name = "distree_bench_peers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_compare_answers_rejects_different_work() -> None:
    peers = _peers()
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    ok = [{"probs": probs.tolist(), "exit": [4, 4]}]
    peers.compare_answers({"a": ok, "b": ok})
    swapped = [{"probs": probs[:, ::-1].tolist(), "exit": [4, 4]}]
    with pytest.raises(peers.PeerError, match="disagree on request 0, rows"):
        peers.compare_answers({"a": ok, "b": swapped})
    close = [{"probs": (probs + np.array([[0.01, -0.01, 0.0]] * 2, np.float32)).tolist(), "exit": [4, 4]}]
    with pytest.raises(peers.PeerError, match="probabilities differ"):
        peers.compare_answers({"a": ok, "b": close})
    early = [{"probs": probs.tolist(), "exit": [4, 2]}]
    with pytest.raises(peers.PeerError, match=r"node\(s\) \[2, 4\], not 4"):
        peers.compare_answers({"a": ok, "b": early})


def _spec(checkpoint: Path, tmp: Path) -> Path:
    """4 nodes of ``checkpoint`` on free loopback ports, last-exit policy, 1 thread per node."""
    from distree.policies import create_policy
    from distree.runtime.cluster import free_ports
    from distree.runtime.spec_toml import spec_toml

    pol = create_policy("last-exit", 4).save(tmp / "last-exit.json")
    path = tmp / "tiny.toml"
    nodes = [{"address": f"127.0.0.1:{p}"} for p in free_ports(4)]
    path.write_text(spec_toml(checkpoint, pol, nodes, threads=1))
    return path


@pytest.mark.timeout(900)  # 10 processes import torch: about 2 minutes on a loaded 2-CPU machine
def test_rpc_and_distree_answer_alike_and_leave_no_process(tiny_checkpoint: Path, tmp_path: Path) -> None:
    peers = _peers()
    spec = _spec(tiny_checkpoint, tmp_path)
    procs = []
    with contextlib.ExitStack() as stack:
        procs = peers.start_peers(["distree", "torch-rpc"], [spec], tmp_path, stack, parallel=True)
        assert all(p.info["threads"] == [1, 1, 1, 1] for p in procs)
        check = peers.cross_check(procs, 0, [1, 4], n=3)  # raises unless both answer every row alike
        for b, answers in check.items():
            for name, got in answers.items():
                probs = np.asarray([a["probs"] for a in got], np.float32)
                assert probs.shape[:2] == (3, int(b)) and probs.shape[2] >= 2, name
                np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
            # a trained model: different inputs get different answers, so agreeing is not trivial
            ref = np.asarray([a["probs"] for a in answers["distree"]])
            assert np.abs(ref - ref[:1]).max() > 1e-2
        for p in procs:
            lat = p.call({"cmd": "lat", "model": 0, "batch": 1, "n": 3, "warm": 1})["lat_s"]
            assert len(lat) == 3 and all(0 < t < 30 for t in lat)
            wall = p.call({"cmd": "tput", "model": 0, "batch": 2, "n": 8, "concurrency": 4})["wall_s"]
            assert wall > 0
        pids = [q for p in procs for q in p.stage_pids(0)] + [int(p.info["driver_pid"]) for p in procs]
        assert len(set(pids)) == 10
    assert procs and all(p.proc.returncode is not None for p in procs)
    alive = [q for q in pids if peers.pid_alive(q)]
    assert not alive, f"processes left behind: {alive}"
