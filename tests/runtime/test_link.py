"""The successor link: the hop's deadline arithmetic, failure reasons, up/down state and seeding, over an
in-process fake successor and a manual clock."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest

from distree.policies import decode_state
from distree.runtime.clock import ManualClock
from distree.runtime.fake import FakeLink, FakeSuccessor, answer_all, features, rpc_error
from distree.runtime.hop import failure_reason, successor_deadlines
from distree.runtime.link import ChainLink
from distree.runtime.protos import node_pb2

NOW, WALL = 100.0, 1.7e9


def test_successor_deadline_is_the_row_deadline_minus_the_way_back():
    timeout, dl = successor_deadlines([NOW + 0.1, NOW + 0.2], now=NOW, wall=WALL, back_s=0.01, max_timeout_s=30)
    assert timeout == pytest.approx(0.19)  # the latest row's
    assert dl == [pytest.approx(WALL + 0.09), pytest.approx(WALL + 0.19)]


def test_timeout_is_capped_and_rows_without_deadline_stay_without():
    timeout, dl = successor_deadlines([NOW + 100.0], now=NOW, wall=WALL, back_s=0.01, max_timeout_s=30)
    assert timeout == 30 and dl == [pytest.approx(WALL + 99.99)]
    timeout, dl = successor_deadlines([math.inf] * 2, now=NOW, wall=WALL, back_s=0.01, max_timeout_s=30)
    assert timeout == 30 and dl == [0.0, 0.0]
    # one row without a deadline: the call may take up to the cap, the other row keeps its deadline
    timeout, dl = successor_deadlines([NOW + 0.1, math.inf], now=NOW, wall=WALL, back_s=0.01, max_timeout_s=30)
    assert timeout == 30 and dl == [pytest.approx(WALL + 0.09), 0.0]


def test_a_past_deadline_leaves_no_time():
    timeout, _ = successor_deadlines([NOW + 0.005], now=NOW, wall=WALL, back_s=0.01, max_timeout_s=30)
    assert timeout == pytest.approx(-0.005)


@pytest.mark.parametrize(
    "code,reason",
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "successor-timeout"),
        (grpc.StatusCode.UNAVAILABLE, "successor-unavailable"),
        (grpc.StatusCode.INTERNAL, "successor-error"),
        (grpc.StatusCode.INVALID_ARGUMENT, "successor-error"),
        (grpc.StatusCode.CANCELLED, "successor-error"),
    ],
)
def test_failure_reasons(code, reason):
    assert failure_reason(code) == reason


def test_forward_sends_ids_features_state_and_deadlines():
    clock = ManualClock(start=NOW, wall_offset=WALL - NOW)
    link = FakeLink(lambda req: answer_all(req, exit_node=4), from_node=3, margin_s=0.002, timeout_s=5.0, clock=clock)
    h = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    state = {"run": np.array([1, 2], np.int32)}

    async def go():
        return await link.forward(["x", "y"], h, state, [NOW + 1.0, NOW + 0.5])

    fwd = asyncio.run(go())
    req, timeout = link.successor.calls[0]
    assert list(req.request_ids) == ["x", "y"] and req.from_node == 3
    np.testing.assert_array_equal(features(req), h)
    np.testing.assert_array_equal(decode_state(req.policy_state)["run"], [1, 2])
    back = 0.002 + 0.5 * 0.001  # margin + half the prior hop estimate
    assert timeout == pytest.approx(1.0 - back)
    assert list(req.deadline_unix_s) == [pytest.approx(WALL + 1.0 - back), pytest.approx(WALL + 0.5 - back)]
    assert fwd.reason == "" and sorted(fwd.answers) == ["x", "y"] and fwd.answers["x"].exit_node == 4
    assert link.forwards == 1


def test_no_call_without_time_for_the_hop():
    clock = ManualClock()
    link = FakeLink(clock=clock)
    fwd = asyncio.run(link.forward(["x"], np.zeros((1, 2), np.float32), {}, [clock.now + 0.001]))
    assert fwd.reason == "deadline" and fwd.answers == {} and link.successor.calls == [] and link.forwards == 0


def test_a_slow_successor_times_out_after_the_rows_deadline():
    clock = ManualClock()
    link = FakeLink(clock=clock, margin_s=0.0)
    link.successor.delay_s = 0.3
    t = clock.now
    fwd = asyncio.run(link.forward(["x"], np.zeros((1, 2), np.float32), {}, [t + 0.2]))
    assert fwd.reason == "successor-timeout" and fwd.answers == {}
    assert fwd.rtt_s == pytest.approx(0.2 - 0.0005) and clock.now - t == pytest.approx(0.2 - 0.0005)
    assert link.up  # slow is not down


def test_unavailable_marks_down_and_the_probe_brings_it_back():
    clock = ManualClock()
    link = FakeLink(clock=clock)
    link.successor.down = True

    async def go():
        fwd = await link.forward(["x"], np.zeros((1, 2), np.float32), {}, [math.inf])
        assert fwd.reason == "successor-unavailable" and not link.up
        assert link.metrics.registry.get_sample_value("distree_successor_up", {"node": "1"}) == 0
        for _ in range(20):  # down: the probe keeps failing
            await asyncio.sleep(0.002)
        assert not link.up
        link.successor.down = False
        for _ in range(5000):
            if link.up:
                break
            await asyncio.sleep(0.001)
        assert link.up
        assert link.metrics.registry.get_sample_value("distree_successor_up", {"node": "1"}) == 1
        await link.close()

    asyncio.run(go())


def test_a_channel_that_connects_at_once_gets_the_rows_again():
    """A successor that started after this node: the first call fails (the channel was backing off) but
    a health check connects, so the rows are sent again instead of being answered locally."""
    link = FakeLink(clock=ManualClock())
    fails = {"left": 1}
    forward = link.successor.forward

    async def flaky(req, timeout):
        if fails["left"]:
            fails["left"] -= 1
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        return await forward(req, timeout)

    link.successor.forward = flaky  # type: ignore[method-assign]

    async def go():
        fwd = await link.forward(["x"], np.zeros((1, 2), np.float32), {}, [math.inf])
        assert fwd.reason == "" and "x" in fwd.answers and link.up
        await link.close()

    asyncio.run(go())


def test_start_seeds_the_successor_estimate_from_info():
    link = FakeLink(info=node_pb2.InfoResponse(est_compute_s=0.01, est_queue_s=0.002))
    link.estimates.next.default = 0.5

    async def go():
        await link.start()
        for _ in range(1000):
            if link.estimates.next.default != 0.5:
                break
            await asyncio.sleep(0.001)
        await link.close()

    asyncio.run(go())
    assert link.estimates.next.default == pytest.approx(0.012) and link.estimates.next.value == pytest.approx(0.012)


def test_a_chain_link_works_over_any_transport():
    class Recorder(FakeSuccessor):
        async def forward(self, req, timeout):
            if req.ids[0] == "boom":
                raise rpc_error(grpc.StatusCode.INTERNAL, "exploded")
            return await super().forward(req, timeout)

    link = ChainLink(Recorder(), from_node=2, clock=ManualClock())

    async def go():
        ok = await link.forward(["a"], np.zeros((1, 1), np.float32), {}, [math.inf])
        bad = await link.forward(["boom"], np.zeros((1, 1), np.float32), {}, [math.inf])
        return ok, bad

    ok, bad = asyncio.run(go())
    assert ok.answers["a"].exit_node == 3 and bad.reason == "successor-error" and link.up


def test_stale_estimates_are_refreshed_from_the_successor_info():
    """One slow answer (a cold start, a slow spell) makes the continue estimate large enough that the
    deadline rule stops forwarding; without new answers the estimate would never come down. The link asks
    the successor's Info once its estimates are older than REFRESH_S and takes in what it reports."""
    from distree.runtime.link import REFRESH_S

    clock = ManualClock(start=NOW, wall_offset=WALL - NOW)
    info = node_pb2.InfoResponse(est_compute_s=0.004, est_queue_s=0.0)

    async def slow(req):
        await clock.sleep(0.4)  # the answer took 0.4 s, reported as the callee's compute
        return answer_all(req, exit_node=2, compute_s=0.4)

    link = FakeLink(slow, clock=clock, info=info)

    async def run():
        await link.forward(["x"], np.zeros((1, 2), np.float32), {}, [math.inf])
        high = link.continue_s()
        link.refresh_if_stale()  # fresh: nothing to do
        await asyncio.sleep(0)
        assert link.continue_s() == high and len(link.successor.calls) == 1
        for _ in range(30):  # the rule keeps answering locally; every REFRESH_S one Info call
            clock.advance(REFRESH_S)
            link.refresh_if_stale()
            link.refresh_if_stale()  # at most one in flight
            for _ in range(3):
                await asyncio.sleep(0)
        return high

    high = asyncio.run(run())
    assert high >= 0.4
    assert link.continue_s() < 0.01  # back to what the successor reports (+ an instant round trip)
    assert len(link.successor.calls) == 1  # no forward was needed for that


def test_a_hung_successor_times_out_after_the_hop_timeout_and_is_probed_back():
    """Once 16 round trips are known, a forward waits at most factor x p99 + margin per hop ahead; one that
    runs past it is answered as successor-timeout and the successor is suspect until a probe answers."""
    clock = ManualClock()
    link = FakeLink(clock=clock)
    link.hop_timeout_factor, link.hop_timeout_pad_s = 4.0, 0.2
    link.successor.delay_s = 0.01
    h = np.zeros((1, 2), np.float32)

    async def go():
        assert link.hop_timeout_s(1) == math.inf  # too few round trips known
        for i in range(16):
            assert (await link.forward([f"r{i}"], h, {}, [math.inf])).reason == ""
        assert link.hop_timeout_s(1) == pytest.approx(4 * 0.01 + 0.2)
        assert link.hop_timeout_s(4) == pytest.approx(4 * 4 * 0.01 + 0.2)  # a batch 4x the usual one
        link.successor.delay_s = 30.0  # hung: answers only after the 30 s cap
        t = clock.now
        fwd = await link.forward(["hung"], h, {}, [math.inf])
        assert fwd.reason == "successor-timeout" and clock.now - t == pytest.approx(0.24)
        assert link.successor.calls[-1][1] == pytest.approx(0.24)
        assert not link.up and link.down_reason == "successor-timeout"
        link.successor.delay_s = 0.01
        for _ in range(5000):  # the probe: the fake answers its health check again
            if link.up:
                break
            await asyncio.sleep(0.001)
        assert link.up
        await link.close()

    asyncio.run(go())


def test_a_row_deadline_shorter_than_the_hop_timeout_does_not_make_the_successor_suspect():
    clock = ManualClock()
    link = FakeLink(clock=clock, margin_s=0.0)
    link.successor.delay_s = 0.01
    h = np.zeros((1, 2), np.float32)

    async def go():
        for i in range(16):
            await link.forward([f"r{i}"], h, {}, [math.inf])
        link.successor.delay_s = 0.1
        fwd = await link.forward(["x"], h, {}, [clock.now + 0.05])
        assert fwd.reason == "successor-timeout" and link.up  # late for that row, not hung
        await link.close()

    asyncio.run(go())
