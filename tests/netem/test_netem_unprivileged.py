"""Parts of distree.netem that need no privileges: capability reporting, parameter and trace validation."""

from __future__ import annotations

import pytest

from distree.fluctuation import TraceFileError, load_bandwidth_trace
from distree.netem import Capabilities, LinkParams, NetemUnavailable, netem_available
from distree.netem import capability as cap_mod
from distree.netem._forwarder import Direction

_FULL = dict(namespaces=True, veth=True, netem=True, netem_rate=True, tbf=True, tun=True)


@pytest.mark.parametrize(
    ("caps", "ok", "needle"),
    [
        (Capabilities(**_FULL), True, "kernel backend: veth pairs shaped with tc netem (rate via netem rate)"),
        (
            Capabilities(**{**_FULL, "netem_rate": False}, reasons={"netem_rate": "no rate option"}),
            True,
            "rate via tbf beneath netem",
        ),
        (
            Capabilities(namespaces=True, veth=True, tbf=True, tun=True, reasons={"netem": "unknown qdisc netem"}),
            True,
            "userspace backend: TUN devices joined by a userspace link emulator (unknown qdisc netem)",
        ),
        (
            Capabilities(namespaces=True, veth=True, tbf=True, reasons={"netem": "no sch_netem", "tun": "no tun"}),
            True,
            "kernel backend: veth pairs shaped with tc tbf (rate only: no sch_netem)",
        ),
        (Capabilities(reasons={"namespaces": "cannot create a network namespace; this needs root"}), False, "root"),
        (
            Capabilities(namespaces=True, reasons={"veth": "no veth", "netem": "no netem", "tun": "no tun"}),
            False,
            "no link-shaping backend works here: no veth; no netem; no tun",
        ),
    ],
)
def test_netem_available_names_the_backend_or_the_missing_capability(monkeypatch, caps, ok, needle):
    monkeypatch.setattr(cap_mod, "probe", lambda: caps)
    got_ok, why = netem_available()
    assert got_ok is ok
    assert needle in why, why


def test_netem_available_agrees_with_the_probe_of_this_machine():
    ok, why = netem_available()
    caps = cap_mod.probe()
    try:
        backend = caps.choose_backend("auto")
    except NetemUnavailable as e:
        assert not ok and why == str(e)
    else:
        assert ok and why.startswith(f"{backend} backend:"), why


def test_probe_without_iproute2_says_what_to_install(monkeypatch):
    monkeypatch.setattr(cap_mod, "which", lambda name: None)
    caps = cap_mod._probe()
    assert not caps.namespaces
    assert "iproute2" in caps.reasons["namespaces"]
    with pytest.raises(NetemUnavailable, match="iproute2"):
        caps.choose_backend("auto")


def test_backend_choice_follows_capabilities():
    full = Capabilities(namespaces=True, veth=True, netem=True, netem_rate=True, tbf=True, tun=True)
    assert full.choose_backend("auto") == "kernel"
    assert full.choose_backend("userspace") == "userspace"
    no_netem = Capabilities(namespaces=True, veth=True, tbf=True, tun=True, reasons={"netem": "unknown qdisc"})
    assert no_netem.choose_backend("auto") == "userspace"
    assert no_netem.choose_backend("kernel") == "kernel"  # rate-only shaping with tbf
    rate_only = Capabilities(namespaces=True, veth=True, tbf=True, reasons={"tun": "no /dev/net/tun"})
    assert rate_only.choose_backend("auto") == "kernel"
    with pytest.raises(NetemUnavailable, match="/dev/net/tun"):
        rate_only.choose_backend("userspace")
    with pytest.raises(ValueError, match="unknown netem backend"):
        full.choose_backend("fast")


def test_link_params_validation_names_the_problem():
    with pytest.raises(ValueError, match="loss is a probability"):
        LinkParams(loss=2.0)
    with pytest.raises(ValueError, match="delay_ms"):
        LinkParams(delay_ms=-1)
    with pytest.raises(ValueError, match="jitter_ms"):
        LinkParams(delay_ms=5, jitter_ms=10)
    with pytest.raises(ValueError, match="rate_mbit"):
        LinkParams(rate_mbit=float("nan"))
    assert not LinkParams().shaped
    assert LinkParams(rate_mbit=8).shaped and not LinkParams(rate_mbit=8).needs_netem


def test_bandwidth_trace_files_are_read_with_clear_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("0.0 4.0\n0.5 fast\n")
    with pytest.raises(TraceFileError, match=r"bad.txt:2"):
        load_bandwidth_trace(bad)
    back = tmp_path / "back.txt"
    back.write_text("0 1\n2 1\n1 1\n")
    with pytest.raises(TraceFileError, match="not after"):
        load_bandwidth_trace(back)


def _model(rate_bps=None, delay_s=0.0, loss=0.0, limit=1000):
    import os
    import random

    r, w = os.pipe()
    os.set_blocking(r, False)
    d = Direction(w, random.Random(0))
    d.configure({"rate_bps": rate_bps, "delay_s": delay_s, "loss": loss, "limit": limit}, 0.0)
    return d, r, w


def test_userspace_model_serialises_then_delays():
    import os

    d, r, w = _model(rate_bps=8000.0, delay_s=0.5)  # 1000 bytes/s
    try:
        d.arrive(b"a" * 100, 0.0)  # on the wire 0.0 .. 0.1 s
        d.arrive(b"b" * 100, 0.0)  # queued, 0.1 .. 0.2 s
        assert d.next_event() == pytest.approx(0.1)
        d.pump(0.15)
        assert d.delayed[0][0] == pytest.approx(0.6)  # serialised at 0.1, + 0.5 s delay
        d.set_rate(16000.0, 0.15)  # second packet half sent: 400 bits left at 16 kbit/s -> 0.025 s
        assert d.done == pytest.approx(0.175)
        d.pump(0.2)
        d.flush(0.65)
        assert os.read(r, 1000) == b"a" * 100
        d.flush(0.7)
        assert os.read(r, 1000) == b"b" * 100
        assert d.stats["tx_packets"] == 2
    finally:
        os.close(r)
        os.close(w)


def test_userspace_model_stalls_at_zero_rate_and_drops_over_limit():
    import os

    d, r, w = _model(rate_bps=0.0, limit=2)
    try:
        for _ in range(3):
            d.arrive(b"x" * 10, 0.0)
        assert d.stats["drop_queue"] == 1
        d.pump(100.0)
        assert d.next_event() == float("inf")  # stalled: nothing leaves
        d.set_rate(800.0, 100.0)  # 100 bytes/s: 10 bytes each -> 0.1 s each
        d.pump(100.25)
        d.flush(100.25)
        assert d.stats["tx_packets"] == 2
    finally:
        os.close(r)
        os.close(w)


class _FakeChain:
    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps
        self.mtu = 1500
        self.backend = "kernel"


def _kernel_link(**caps):
    from distree.netem.chain import KernelLink, Namespace

    chain = _FakeChain(Capabilities(namespaces=True, veth=True, tbf=True, **caps, reasons={"netem": "no sch_netem"}))
    a, b = Namespace(chain, 0, "c"), Namespace(chain, 1, "n1")  # type: ignore[arg-type]
    return KernelLink(chain, 0, a, b)


def test_kernel_qdisc_commands_for_each_kernel():
    with_rate = _kernel_link(netem=True, netem_rate=True)
    p = LinkParams(rate_mbit=8, delay_ms=20, jitter_ms=2.5, loss=0.01)
    assert with_rate._qdiscs(p) == [
        (
            ("root", "handle", "1:"),
            ("netem", "limit", "1000", "delay", "20000us", "2500us", "loss", "random", "1%", "rate", "8000000bit"),
        )
    ]
    no_rate = _kernel_link(netem=True)
    (pos0, netem), (pos1, tbf) = no_rate._qdiscs(p)
    assert pos0 == ("root", "handle", "1:") and netem[0] == "netem" and "rate" not in netem
    assert pos1 == ("parent", "1:1", "handle", "10:")  # tbf beneath netem
    assert tbf[:3] == ("tbf", "rate", "8000000bit") and int(tbf[4]) >= 2 * 1514
    # rate alone needs no netem: tbf at the root, also on a kernel without sch_netem
    no_netem = _kernel_link()
    [(pos, q)] = no_netem._qdiscs(LinkParams(rate_mbit=2))
    assert pos == ("root", "handle", "1:") and q[:3] == ("tbf", "rate", "2000000bit")
    assert no_netem._qdiscs(LinkParams()) == []
    with pytest.raises(NetemUnavailable, match="backend='userspace'"):
        no_netem._qdiscs(LinkParams(delay_ms=5))
