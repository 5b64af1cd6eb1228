"""The real runtime over emulated links: 4 `distree serve` processes in their own network namespaces.

Every link (client <-> node 1 and node k <-> node k+1) is shaped to 10 ms each way. A last-exit
request crosses 8 one-way links (there and back), so its latency is at least 80 ms; with a deadline
that leaves room for only about two nodes, the QoS rule (fed by the nodes' own measured hop times)
answers from an earlier node, in time. Skipped with the reason where namespaces are not permitted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from distree.netem import NetnsChain, netem_available
from distree.policies import create_policy
from distree.runtime.spec_toml import spec_toml

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("netem")]

DELAY_MS = 10.0
CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from distree.runtime import ClusterClient
    from distree.runtime.client import wait_healthy
    addr, deadline = sys.argv[1], float(sys.argv[2])
    assert wait_healthy(addr, timeout_s=60), "node 1 did not report SERVING"  # ready: its successors serve
    x = np.random.default_rng(0).integers(0, 256, size=(1, 1, 8, 8), dtype=np.uint8)
    out = []
    with ClusterClient(addr) as c:
        for i in range(14):
            r = c.infer(x, deadline_s=deadline if deadline > 0 else None)
            out.append([float(r.latency_s), int(r.exit_node[0]), bool(r.degraded[0])])
    print(json.dumps(out))
    """
)


def _client(chain: NetnsChain, deadline_s: float) -> list[list]:
    p = chain.client.run(
        [sys.executable, "-c", CLIENT, f"{chain.addr(1)}:7001", str(deadline_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    return json.loads(out)


def test_latency_follows_link_delay_and_deadlines_exit_early(tmp_path, tiny_checkpoint):
    ok, why = netem_available()
    if not ok:
        pytest.skip(f"network emulation not available here: {why}")
    policy = create_policy("last-exit", 4).save(tmp_path / "last.json")
    with NetnsChain(4) as chain:
        nodes = [{"address": f"{chain.addr(k)}:7001", "segment": k} for k in range(1, 5)]
        spec = tmp_path / "cluster.toml"
        token = tmp_path / "chain.token"  # nodes beyond loopback: internal calls carry the chain's secret
        token.write_text("netem-test-token\n")
        token.chmod(0o600)
        spec.write_text(spec_toml(tiny_checkpoint, policy, nodes, access={"token_file": str(token)}))
        chain.shape_all(delay_ms=DELAY_MS)
        procs = [
            chain.node(k).run(
                [sys.executable, "-m", "distree", "serve", "--spec", str(spec), "--node", str(k)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k in range(1, 5)
        ]
        for k in range(1, 5):
            chain.client.wait_tcp(chain.addr(k), 7001, timeout_s=60)
        full = _client(chain, 0.0)[4:]  # the first requests warm up channels and estimates
        lat = sorted(r[0] for r in full)
        assert all(r[1] == 4 and not r[2] for r in full)
        median_ms = 1000 * lat[len(lat) // 2]
        assert median_ms >= 8 * DELAY_MS, median_ms  # 4 links, each crossed twice: the physical floor
        # room for node 1 and node 2 (4 crossings = 40 ms) but not for node 3 (6 crossings = 60 ms)
        deadline_s = 0.052
        short = _client(chain, deadline_s)[4:]
        assert all(r[1] < 4 for r in short), short
        assert sum(r[0] <= deadline_s for r in short) >= 0.8 * len(short), short
        # what the links add is what they were shaped to: the same requests without the delay, measured
        # now (the same load on the machine), are faster by about 8 x the delay, not more than 1.6x that
        chain.shape_all(delay_ms=0.0)
        bare = sorted(r[0] for r in _client(chain, 0.0)[4:])
        added_ms = median_ms - 1000 * bare[len(bare) // 2]
        assert 0.6 * 8 * DELAY_MS <= added_ms <= 1.6 * 8 * DELAY_MS, (median_ms, added_ms)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=15)
