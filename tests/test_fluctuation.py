"""Speed profiles and bandwidth traces: hand-solvable cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distree.fluctuation import (
    ConstantBandwidth,
    ConstantSpeed,
    PiecewiseRate,
    TraceFileError,
    bandwidth_from_spec,
    load_bandwidth_trace,
    speed_profile_from_spec,
)

FIXTURES = Path(__file__).parent / "fixtures" / "traces"


def _write(tmp_path: Path, text: str, name: str = "t.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_constant_speed() -> None:
    sp = speed_profile_from_spec({"kind": "constant", "factor": 0.5})
    assert sp.factor_at(123.0) == 0.5
    assert sp.stretch(7.0, 1.0) == pytest.approx(2.0)
    np.testing.assert_allclose(sp.stretch(np.array([0.0, 5.0]), np.array([1.0, 3.0])), [2.0, 6.0])
    assert isinstance(speed_profile_from_spec(None), ConstantSpeed)
    assert speed_profile_from_spec(2).stretch(0.0, 1.0) == pytest.approx(0.5)


def test_trace_speed_stretch_mid_task(tmp_path: Path) -> None:
    # speed 1 on [0,2), 0.5 on [2,4), loop period 6 with 0.25 on [4,6)
    p = _write(tmp_path, "# comment\n0 1.0\n2 0.5\n\n4 0.25\n")
    sp = speed_profile_from_spec({"kind": "trace", "path": str(p), "loop": True})
    assert sp.factor_at(1.0) == 1.0
    assert sp.factor_at(2.0) == 0.5
    assert sp.factor_at(5.9) == 0.25
    assert sp.factor_at(6.5) == 1.0  # looped
    # start at 1 with 2 s of nominal work: 1 s done by t=2, the rest at half speed -> 2 more s
    assert sp.stretch(1.0, 2.0) == pytest.approx(3.0)
    # start at 3: 1 s at 0.5 (0.5 work), 2 s at 0.25 (0.5 work), then full speed for the last 1 work
    assert sp.stretch(3.0, 2.0) == pytest.approx(1.0 + 2.0 + 1.0)
    # a whole period does 2 + 1 + 0.5 = 3.5 work in 6 s
    assert sp.stretch(0.0, 3.5) == pytest.approx(6.0)
    assert sp.stretch(0.0, 7.0) == pytest.approx(12.0)
    assert sp.stretch(0.0, 0.0) == 0.0
    assert sp.mean_factor() == pytest.approx(3.5 / 6)
    # vectorised agrees with scalar
    t0 = np.array([1.0, 3.0, 0.0, 100.3])
    w = np.array([2.0, 2.0, 3.5, 0.7])
    np.testing.assert_allclose(sp.stretch(t0, w), [sp.stretch(float(a), float(b)) for a, b in zip(t0, w, strict=True)])
    nl = speed_profile_from_spec({"kind": "trace", "path": str(p), "loop": False})
    assert nl.factor_at(1000.0) == 0.25
    assert nl.stretch(4.0, 1.0) == pytest.approx(4.0)


def test_zero_rate_interval_adds_its_length() -> None:
    r = PiecewiseRate([0.0, 1.0, 3.0], [2.0, 0.0, 1.0], period=4.0)
    # 3 units from t=0: 2 by t=1, stalled until 3, then 1 more -> t=4
    assert r.finish_time(0.0, 3.0) == pytest.approx(4.0)
    # starting inside the stall
    assert r.finish_time(2.0, 0.5) == pytest.approx(3.5)
    assert r.work(2.0) == pytest.approx(2.0)
    assert r.time_of_work(2.0) == pytest.approx(1.0)  # earliest time reaching it
    with pytest.raises(ValueError, match="zero over the whole"):
        PiecewiseRate([0.0, 1.0], [0.0, 0.0], period=2.0)
    never = PiecewiseRate([0.0, 1.0], [1.0, 0.0])
    assert math.isinf(never.finish_time(0.0, 2.0))


def test_markov_is_seeded_and_follows_its_path() -> None:
    spec = {"kind": "markov", "factors": [1.0, 0.3], "mean_holding_s": [2.0, 1.0], "seed": 3, "path_length": 500}
    a, b = speed_profile_from_spec(spec), speed_profile_from_spec(spec)
    ts = np.linspace(0, 500, 1001)
    np.testing.assert_array_equal(a.factor_at(ts), b.factor_at(ts))
    c = speed_profile_from_spec({**spec, "seed": 4})
    assert not np.array_equal(a.factor_at(ts), c.factor_at(ts))
    assert set(np.unique(a.factor_at(ts))) <= {1.0, 0.3}
    # two states, uniform among the others: strictly alternating
    st = a.states
    assert np.all(st[1:] != st[:-1])
    # mean holding times are respected on average (500 visits, loose bound)
    hold = np.diff(np.append(a.rate.times, a.rate.period))
    assert hold[st == 0].mean() == pytest.approx(2.0, rel=0.25)
    assert hold[st == 1].mean() == pytest.approx(1.0, rel=0.25)
    # time-average factor close to (2*1 + 1*0.3) / 3
    assert a.mean_factor() == pytest.approx((2.0 + 0.3) / 3.0, rel=0.1)
    # stretch: exact integral of the factor over [t0, t0 + stretch] equals the work
    t0, work = 7.3, 5.0
    d = a.stretch(t0, work)
    grid = np.linspace(t0, t0 + d, 200001)
    integral = np.trapezoid(a.factor_at(grid), grid)
    assert integral == pytest.approx(work, rel=1e-3)


def test_markov_transition_matrix_and_errors() -> None:
    sp = speed_profile_from_spec(
        {
            "kind": "markov",
            "factors": [1.0, 0.5, 0.1],
            "mean_holding_s": [1, 1, 1],
            "transition": [[0, 1, 0], [0, 0, 1], [1, 0, 0]],
            "path_length": 30,
        }
    )
    np.testing.assert_array_equal(sp.states[:6], [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="sum to 1"):
        speed_profile_from_spec(
            {"kind": "markov", "factors": [1, 0.5], "mean_holding_s": [1, 1], "transition": [[0.5, 0.6], [1, 0]]}
        )
    with pytest.raises(ValueError, match="one entry per state"):
        speed_profile_from_spec({"kind": "markov", "factors": [1, 0.5], "mean_holding_s": [1]})
    with pytest.raises(ValueError, match="unknown kind"):
        speed_profile_from_spec({"kind": "sine"})
    with pytest.raises(ValueError, match="unknown key"):
        speed_profile_from_spec({"kind": "constant", "factr": 1})
    with pytest.raises(ValueError, match="> 0"):
        speed_profile_from_spec({"kind": "constant", "factor": 0})


def test_bandwidth_step_shows_up_exactly(tmp_path: Path) -> None:
    # 8 Mbit/s (1 MB/s) for 10 s, then 0.8 Mbit/s (100 kB/s)
    p = _write(tmp_path, "0.0\t8.0\n10.0\t0.8\n")
    bw = load_bandwidth_trace(p, loop=False)
    assert bw.rate_at(9.999) == 8.0
    assert bw.rate_at(10.0) == 0.8
    assert bw.transfer_time(0.0, 1_000_000) == pytest.approx(1.0)
    # straddling the step: 0.5 MB before t=10, remaining 0.5 MB at 100 kB/s -> 5 s
    assert bw.transfer_time(9.5, 1_000_000) == pytest.approx(0.5 + 5.0)
    assert bw.transfer_time(10.0, 100_000) == pytest.approx(1.0)
    starts = np.array([8.0, 9.0, 9.9, 10.0, 11.0])
    got = bw.transfer_time(starts, np.full(5, 200_000.0))
    np.testing.assert_allclose(got, [0.2, 0.2, 0.1 + 1.0, 2.0, 2.0])


def test_bandwidth_loop_and_zero(tmp_path: Path) -> None:
    # 8 Mbit/s on [0,1), 0 on [1,2), 16 on [2,3) ; mean step 1 -> period 3
    p = _write(tmp_path, "0 8\n1 0\n2 16\n")
    bw = load_bandwidth_trace(p)
    assert bw.rate_at(3.5) == 8.0  # looped
    assert bw.transfer_time(0.5, 1_000_000) == pytest.approx(0.5 + 1.0 + 0.25)
    assert bw.transfer_time(1.2, 1_000) == pytest.approx(0.8 + 0.0005)
    # far past the end: periodic
    assert bw.transfer_time(300.5, 1_000_000) == pytest.approx(bw.transfer_time(0.5, 1_000_000))
    # a full period carries 1 MB + 2 MB
    assert bw.transfer_time(0.0, 3_000_000) == pytest.approx(3.0)
    assert bw.mean_mbps() == pytest.approx(8.0)
    shifted = load_bandwidth_trace(p, offset_s=1.0)
    assert shifted.rate_at(0.0) == 0.0 and shifted.rate_at(1.0) == 16.0 and shifted.rate_at(2.5) == 8.0
    half = load_bandwidth_trace(p, offset_s=0.5)
    np.testing.assert_allclose(half.rate_at(np.array([0.0, 0.6, 1.6, 2.6])), [8, 0, 16, 8])


def test_bandwidth_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="no bandwidth"):
        load_bandwidth_trace(tmp_path / "missing")
    with pytest.raises(TraceFileError, match=r":2: expected two columns"):
        load_bandwidth_trace(_write(tmp_path, "0 1\n1 2 3\n"))
    with pytest.raises(TraceFileError, match=r":1: not numbers"):
        load_bandwidth_trace(_write(tmp_path, "zero one\n"))
    with pytest.raises(TraceFileError, match="not after"):
        load_bandwidth_trace(_write(tmp_path, "0 1\n0 2\n"))
    with pytest.raises(TraceFileError, match=">= 0"):
        load_bandwidth_trace(_write(tmp_path, "0 -1\n"))
    with pytest.raises(TraceFileError, match="no data rows"):
        load_bandwidth_trace(_write(tmp_path, "# only a comment\n"))
    with pytest.raises(TraceFileError, match="every bandwidth is 0"):
        load_bandwidth_trace(_write(tmp_path, "0 0\n1 0\n"))


def test_constant_bandwidth_and_specs() -> None:
    bw = bandwidth_from_spec({"kind": "constant", "mbps": 8})
    assert isinstance(bw, ConstantBandwidth)
    assert bw.transfer_time(5.0, 1_000_000) == pytest.approx(1.0)
    np.testing.assert_allclose(bw.transfer_time(np.zeros(2), np.array([1e6, 2e6])), [1.0, 2.0])
    assert bandwidth_from_spec(80).transfer_time(0.0, 1e6) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown key"):
        bandwidth_from_spec({"kind": "constant", "mbit": 8})
    with pytest.raises(ValueError, match="> 0"):
        bandwidth_from_spec(0)


def test_real_hsdpa_fixture_matches_piecewise_sum() -> None:
    files = sorted(p for p in FIXTURES.iterdir() if p.name.startswith("norway"))
    assert files, "fixture traces missing"
    bw = bandwidth_from_spec({"kind": "trace", "path": str(files[0])})
    t, v = np.loadtxt(files[0], unpack=True)
    t = t - t[0]
    # bytes carried on [0, t[5]] computed by hand from the rows
    nbytes = float(np.sum(v[:5] * np.diff(t[:6])) * 1e6 / 8)
    assert bw.transfer_time(0.0, nbytes) == pytest.approx(t[5], rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    seg=st.lists(st.tuples(st.floats(0.01, 5.0), st.floats(0.0, 4.0)), min_size=1, max_size=8),
    loop=st.booleans(),
    t0=st.floats(0.0, 50.0),
    amount=st.floats(0.0, 20.0),
)
def test_scalar_and_vector_paths_agree(seg: list[tuple[float, float]], loop: bool, t0: float, amount: float) -> None:
    durs = np.array([d for d, _ in seg])
    rates = np.array([r for _, r in seg])
    if not np.any(rates > 0):
        rates[0] = 1.0
    if not loop:
        rates[-1] = max(rates[-1], 0.5)
    times = np.concatenate([[0.0], np.cumsum(durs)[:-1]])
    r = PiecewiseRate(times, rates, period=float(durs.sum()) if loop else None)
    scalar = r.finish_time(t0, amount)
    vec = r.finish_time(np.array([t0, t0]), np.array([amount, amount]))
    assert vec[0] == pytest.approx(scalar, rel=1e-12, abs=1e-12)
    assert r.work(t0) == pytest.approx(float(r.work(np.array([t0]))[0]), rel=1e-12, abs=1e-12)
    # the work done between t0 and the finish time is the amount asked for
    assert r.work(scalar) - r.work(t0) == pytest.approx(amount, rel=1e-9, abs=1e-9)
    assert r.value_at(t0) == float(r.value_at(np.array([t0]))[0])
