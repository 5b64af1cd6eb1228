"""The node core against a fake successor: batch splitting, every degradation reason, the QoS rule with
the link's estimates, emulated device speed. No sockets; time is a manual clock."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
from _unit import TagBackend, Unit, rows, run, submit, tag_answers

from distree.policies import create_policy, decode_state
from distree.runtime.clock import ManualClock
from distree.runtime.fake import FakeLink, features
from distree.runtime.protos import node_pb2
from distree.runtime.servicer import info_response
from distree.runtime.tensors import BadTensor


def _by_id(chunk) -> dict[str, node_pb2.Answer]:
    return dict(zip(chunk.ids, chunk.answers, strict=True))


def test_exiting_rows_are_answered_here_and_the_rest_forwarded_as_one_batch_in_order(unit: Unit):
    clock = ManualClock()
    spec = unit.spec("batching8", batching={"max_batch_size": 8, "max_queue_delay_ms": 1.0})
    core = unit.core(2, clock=clock, spec=spec)
    core.backend.batches.clear()  # the warm-up's
    shape = unit.in_shape(2)
    chunks = {
        "a": rows(shape, [1, 0], [10, 11]),
        "b": rows(shape, [0], [20]),
        "c": rows(shape, [1, 1, 0], [30, 31, 32]),
    }

    async def go():
        await core.start()
        try:
            return await asyncio.gather(
                *(submit(core, [f"{n}{i}" for i in range(len(x))], x) for n, x in chunks.items())
            )
        finally:
            await core.close()

    a, b, c = run(go())
    assert core.backend.batches == [6] and core.counts["batches"] == 1  # three chunks, one batch
    calls = core.link.successor.calls
    assert len(calls) == 1  # the rows that go on leave together
    req = calls[0][0]
    assert list(req.request_ids) == ["a1", "b0", "c2"]
    np.testing.assert_array_equal(features(req).reshape(3, -1)[:, 1], [11, 20, 32])
    assert req.from_node == 2
    # every row's answer is in its own chunk, in row order: node 2 for the confident rows, node 3 (tag) for the others
    assert [(x.exit_node, x.degraded) for x in a.answers] == [(2, False), (3, False)]
    assert a.answers[1].score == 11 and b.answers[0].score == 20 and c.answers[2].score == 32
    assert [x.exit_node for x in c.answers] == [2, 2, 3]
    assert [x.request_id for x in c.answers] == ["c0", "c1", "c2"]
    assert len(a.answers[0].probs) == 10 and a.answers[0].probs[0] == pytest.approx(1.0)
    assert not a.answers[1].probs  # forwarded rows get their probabilities from their exit node
    assert core.counts == {"rows": 6, "batches": 1, "exits_here": 3}


def test_forwarded_rows_carry_their_own_policy_state(unit: Unit):
    # patience at node 2: a row exits when its prediction has held for 2 nodes; state travels with the rest
    policy = create_policy("patience", 4, [np.inf, 2, 2, 0])
    core = unit.core(2, policy=policy, spec=unit.spec("batching4", batching={"max_batch_size": 4}))
    shape = unit.in_shape(2)
    s1 = {"pred": np.array([0, 0], np.int32), "run": np.array([1, 0], np.int32)}
    s2 = {"pred": np.array([5], np.int32), "run": np.array([3], np.int32)}

    async def go():
        await core.start()
        try:
            return await asyncio.gather(
                core.submit(["p0", "p1"], rows(shape, [0, 0], [1, 2]), s1, [math.inf] * 2),
                core.submit(["q0"], rows(shape, [0], [3]), s2, [math.inf] * 1),
            )
        finally:
            await core.close()

    p, q = run(go())
    assert [a.exit_node for a in p.answers + q.answers] == [2, 3, 3]  # run 1 -> 2 exits; 0 -> 1 and 3 -> 0 go on
    req = core.link.successor.calls[0][0]
    assert list(req.request_ids) == ["p1", "q0"]
    state = decode_state(req.policy_state)
    np.testing.assert_array_equal(state["run"], [1, 0])
    np.testing.assert_array_equal(state["pred"], [0, 0])


def test_deadline_too_close_for_the_successor_answers_here(unit: Unit):
    clock = ManualClock()
    core = unit.core(2, clock=clock)
    x = rows(unit.in_shape(2), [0, 0, 1], [1, 2, 3])

    async def go():
        # row 0: 1 ms left, below the 5 ms margin: the QoS rule exits it; row 1: no deadline; row 2 confident
        return await submit(core, ["r0", "r1", "r2"], x, [clock.now + 0.001, np.inf, clock.now + 0.001])

    c = run(go())
    assert [(a.exit_node, a.degraded, a.reason) for a in c.answers] == [
        (2, True, "deadline"),
        (3, False, ""),
        (2, False, ""),
    ]
    assert list(core.link.successor.calls[0][0].request_ids) == ["r1"]
    assert core.degraded_counts["deadline"] == 1
    assert core.metrics.registry.get_sample_value("distree_deadline_misses_total", {"node": "2"}) == 0


def test_no_time_left_for_the_hop_answers_here_without_a_call(unit: Unit):
    clock = ManualClock()
    # the link keeps 10 ms for the way back, more than the core's 5 ms: 8 ms left passes the QoS rule
    # (estimated 1 ms to the successor's answer) but leaves the hop no time
    link = FakeLink(tag_answers, from_node=2, margin_s=0.010, clock=clock)
    core = unit.core(2, clock=clock, link=link)
    assert core.est_continue() == pytest.approx(0.001)
    c = run(submit(core, ["r0"], rows(unit.in_shape(2), [0], [1]), clock.now + 0.008))
    assert (c.answers[0].exit_node, c.answers[0].reason) == (2, "deadline")
    assert link.successor.calls == [] and link.forwards == 0


@pytest.mark.parametrize(
    "fail,reason,stays_up",
    [
        ("timeout", "successor-timeout", True),
        (grpc.StatusCode.INTERNAL, "successor-error", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "successor-error", True),
        (grpc.StatusCode.UNAVAILABLE, "successor-unavailable", False),
    ],
)
def test_a_failed_forward_is_answered_here_with_its_reason(unit: Unit, fail, reason, stays_up):
    clock = ManualClock()
    core = unit.core(2, clock=clock)
    succ = core.link.successor
    if fail == "timeout":
        succ.delay_s = 1.0
    else:
        succ.fail = fail
    x = rows(unit.in_shape(2), [0, 1, 0], [1, 2, 3])

    async def go():
        try:
            return await submit(core, ["r0", "r1", "r2"], x, clock.now + 0.5)
        finally:
            await core.close()

    c = run(go())
    assert [(a.exit_node, a.degraded, a.reason) for a in c.answers] == [
        (2, True, reason),
        (2, False, ""),
        (2, True, reason),
    ]
    assert c.answers[0].probs[0] == pytest.approx(0.1)  # this node's own exit
    assert core.degraded_counts[reason] == 2 and sum(core.degraded_counts.values()) == 2
    assert core.link.up is stays_up
    if fail == "timeout":  # the call was given the rows' deadline minus the way back, and took all of it
        assert succ.calls[0][1] == pytest.approx(0.5 - 0.0055)
        assert c.downstream_s == pytest.approx(0.5 - 0.0055)


def test_rows_the_successor_leaves_out_are_answered_here(unit: Unit):
    def first_only(req: node_pb2.ForwardRequest) -> node_pb2.ForwardResponse:
        resp = tag_answers(req)
        del resp.answers[1:]
        return resp

    clock = ManualClock()
    core = unit.core(2, clock=clock, link=FakeLink(first_only, from_node=2, clock=clock))
    c = run(submit(core, ["r0", "r1"], rows(unit.in_shape(2), [0, 0], [1, 2])))
    assert [(a.exit_node, a.reason) for a in c.answers] == [(3, ""), (2, "successor-error")]


def test_a_down_successor_gets_no_rows_until_it_is_healthy_again(unit: Unit):
    clock = ManualClock()
    info = node_pb2.InfoResponse(est_compute_s=0.02, est_queue_s=0.001)
    link = FakeLink(tag_answers, from_node=2, clock=clock, info=info)
    core = unit.core(2, clock=clock, link=link)
    succ = link.successor
    shape = unit.in_shape(2)

    async def go():
        await core.start()
        try:
            await _until(lambda: link.estimates.next.default == pytest.approx(0.021))  # seeded from Info
            succ.down = True
            first = await submit(core, ["d0"], rows(shape, [0], [1]))
            assert not link.up and not info_response(core).successor_up
            calls = len(succ.calls)
            # while it is down every row is answered here at once: degraded, unless it exits anyway
            forced = await submit(core, ["f0", "f1"], rows(shape, [0, 1], [2, 3]))
            assert len(succ.calls) == calls
            link.estimates.next.default = 0.0
            succ.info_response = node_pb2.InfoResponse(est_compute_s=0.03)
            succ.down = False
            await _until(lambda: link.up)
            await _until(lambda: link.estimates.next.default == pytest.approx(0.03))  # re-seeded after reconnecting
            back = await submit(core, ["b0"], rows(shape, [0], [4]))
            return first, forced, back
        finally:
            await core.close()

    first, forced, back = run(go())
    assert (first.answers[0].exit_node, first.answers[0].reason) == (2, "successor-unavailable")
    assert [(a.exit_node, a.degraded, a.reason) for a in forced.answers] == [
        (2, True, "successor-unavailable"),
        (2, False, ""),
    ]
    assert (back.answers[0].exit_node, back.answers[0].degraded) == (3, False)
    assert core.degraded_counts["successor-unavailable"] == 2
    assert succ.closed


async def _until(cond, tries: int = 5000) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_estimates_from_responses_feed_the_qos_rule_and_the_successor_deadline(unit: Unit):
    clock = ManualClock()
    timing = {"compute_s": 0.001, "queue_s": 0.0005, "downstream_s": 0.001}
    link = FakeLink(lambda req: tag_answers(req, **timing), from_node=2, clock=clock)
    link.successor.delay_s = 0.004  # each call takes 4 ms of which 2 ms are the successor's
    core = unit.core(2, clock=clock, link=link)
    shape = unit.in_shape(2)

    async def go():
        await submit(core, ["e0"], rows(shape, [0], [1]))
        est = link.estimates
        assert est.hop_samples.last(1) == [pytest.approx(0.002)]  # round trip - compute - downstream
        assert est.wire_samples.last(1) == [pytest.approx(0.0015)]  # round trip - the successor's handler time
        assert est.hop.value == pytest.approx(0.0015)  # transport without the successor's queue
        assert est.next.value == pytest.approx(0.0015)  # the successor's queue + compute
        assert core.est_continue() == pytest.approx(0.003)
        timing["compute_s"] = 0.003
        await submit(core, ["e1"], rows(shape, [0], [2]))
        assert est.next.value == pytest.approx(0.0015 + 0.2 * (0.0035 - 0.0015))  # EWMA, alpha 0.2
        cont = core.est_continue()
        # 0.1 ms less than the estimate left after the 5 ms margin: exits here on the deadline
        late = await submit(core, ["e2"], rows(shape, [0], [3]), clock.now + 0.005 + cont - 0.0001)
        assert len(link.successor.calls) == 2  # e2 never left
        # 0.1 ms more: it goes on (and the 4 ms call outlasts the 2.x ms its deadline leaves it)
        edge = await submit(core, ["e2b"], rows(shape, [0], [3]), clock.now + 0.005 + cont + 0.0001)
        assert len(link.successor.calls) == 3 and edge.answers[0].reason == "successor-timeout"
        back, t, wall = link.back_s(), clock.now, clock.wall()
        assert back == pytest.approx(0.005 + 0.5 * est.hop.value)  # margin + half the transport round trip
        d = t + 0.05
        on = await submit(core, ["e3"], rows(shape, [0], [4]), d)
        return late, on, d - back - t, wall + (d - back - t)

    late, on, timeout, wall_deadline = run(go())
    assert late.answers[0].reason == "deadline" and on.answers[0].exit_node == 3
    assert len(link.successor.calls) == 4
    # the successor's deadline is the row's minus the answer's way back; the call's timeout is the same
    req, t = link.successor.calls[-1]
    assert t == pytest.approx(timeout, abs=1e-12)
    assert req.deadline_unix_s[0] == pytest.approx(wall_deadline, abs=1e-9)
    info = info_response(core)
    assert info.est_hop_s == pytest.approx(link.estimates.hop.value)
    assert info.est_next_s == pytest.approx(link.estimates.next.value)


def test_forward_request_carries_wall_clock_deadlines(unit: Unit):
    clock = ManualClock(start=50.0, wall_offset=1_000_000.0)
    core = unit.core(2, clock=clock)
    x = rows(unit.in_shape(2), [0, 0], [1, 2])
    run(submit(core, ["w0", "w1"], x, [clock.now + 0.2, math.inf]))
    req, timeout = core.link.successor.calls[0]
    back = 0.005 + 0.5 * 0.001  # margin + half the prior hop estimate
    assert list(req.deadline_unix_s) == [pytest.approx(1_000_050.0 + 0.2 - back), 0.0]
    assert timeout == core.spec.forward_timeout_s  # a row without a deadline: the cap


@pytest.mark.parametrize("speed,expected_s", [(None, 0.060), ({"kind": "constant", "factor": 0.5}, 0.120)])
def test_nominal_compute_is_the_emulated_device_time(unit: Unit, speed, expected_s):
    extra = {"nominal_compute_ms": 30.0} | ({"speed": speed} if speed else {})
    nodes = [{"address": f"127.0.0.1:{7000 + k}", **(extra if k == 3 else {})} for k in range(4)]
    from distree.runtime import load_spec
    from distree.runtime.spec_toml import spec_toml

    path = unit.root / f"nominal{expected_s}.toml"
    path.write_text(spec_toml(unit.checkpoint, unit.policy_path, nodes))
    clock = ManualClock()
    core = unit.core(4, clock=clock, spec=load_spec(path))
    t = clock.now
    c = run(submit(core, ["n0", "n1"], rows(unit.in_shape(4), [0, 0], [1, 2])))
    assert clock.now - t == pytest.approx(expected_s)  # 2 rows x 30 ms, stretched by the speed factor
    assert c.compute_s == pytest.approx(expected_s) and core.est_compute.value == pytest.approx(expected_s)
    assert [a.exit_node for a in c.answers] == [4, 4]  # the last node always answers


async def queued_together(core, calls: list) -> list:
    """Submit ``(ids, x, state)`` calls while the node is busy so they queue, then let one worker pass
    take them; each call's chunk, or the exception it was refused with."""
    await core.start()
    try:
        core.batcher.busy = True
        tasks = [asyncio.ensure_future(core.submit(ids, x, st, [math.inf] * len(ids))) for ids, x, st in calls]
        await asyncio.sleep(0)
        core.batcher.busy = False
        core.batcher._kick()
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await core.close()


def test_a_forward_whose_state_the_policy_cannot_use_is_refused_alone(unit: Unit):
    """With dynamic batching, a Forward without the policy state its node needs is refused with a clear
    error; requests queued with it keep their own answers (it never joins their batch)."""
    policy = create_policy("patience", 4, [np.inf, 2, 2, 0])
    core = unit.core(2, policy=policy, spec=unit.spec("batching8b", batching={"max_batch_size": 8}))
    shape = unit.in_shape(2)
    good = {"pred": np.array([0], np.int32), "run": np.array([1], np.int32)}

    calls = [([f"g{i}"], rows(shape, [0], [i]), good) for i in range(3)]
    calls.insert(1, (["bad"], rows(shape, [0], [9]), {}))
    res = run(queued_together(core, calls))
    assert isinstance(res[1], BadTensor) and "needs the state carried from node 0 (keys 'pred', 'run')" in str(res[1])
    oks = [r for i, r in enumerate(res) if i != 1]
    assert [a.exit_node for r in oks for a in r.answers] == [2, 2, 2]  # run 1 -> 2: each exits, none degraded
    assert not any(a.degraded for r in oks for a in r.answers)


def test_an_input_that_makes_logits_non_finite_is_refused_and_its_batch_mates_answered(unit: Unit):
    class Overflow(TagBackend):
        def run(self, x):
            h, logits, feats = super().run(x)
            logits[x.reshape(len(x), -1)[:, 1] > 1e30] = np.inf  # what a 3e38 input does to a real network
            return h, logits, feats

    core = unit.core(2, backend=Overflow(), spec=unit.spec("batching8c", batching={"max_batch_size": 8}))
    shape = unit.in_shape(2)

    a, b, c = run(
        queued_together(
            core,
            [
                (["a"], rows(shape, [1], [1.0]), {}),
                (["b0", "b1"], rows(shape, [1, 0], [2.0, 3e38]), {}),
                (["c"], rows(shape, [0], [4.0]), {}),
            ],
        )
    )
    assert isinstance(b, BadTensor) and "row 1 of the request makes node 2 compute non-finite logits" in str(b)
    assert a.answers[0].exit_node == 2 and c.answers[0].exit_node == 3 and c.answers[0].score == 4.0
    assert [list(r.request_ids) for r, _ in core.link.successor.calls] == [["c"]]  # nothing of b goes on
