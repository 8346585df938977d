"""The raw SYN state machine against a simulated network in virtual time.

The simulated routers rate-limit ICMP like Linux, forge RSTs, drop and reject; the property
is that every verdict matches what the path really does, whatever the rate-limit state.
"""

from __future__ import annotations

import copy
import errno
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailpath.probes import wire
from mailpath.probes.classify import Verdict
from mailpath.probes.result import Target
from mailpath.probes.syn import Options, SynBatch

from tests.simnet import CLOSED, DROP, FORGE_RST, FORGE_SYNACK, OPEN, Path, Router, SimNet, icmp, run

CLIENT = {4: "198.18.1.1", 6: "2001:db8:1::1"}
ROUTER_CODES = {4: [0, 1, 2, 3, 9, 10, 13], 6: [0, 1, 3, 4, 5, 6]}
DEST_CODES = {4: [3, 13, 10], 6: [1, 4]}


def _routers(n: int, tokens: list[float], intervals: list[float]) -> list[Router]:
    return [
        Router(
            f"198.18.{k}.254",
            f"2001:db8:{k}::fe",
            icmp_interval=intervals[k - 1],
            initial_tokens=tokens[k - 1],
        )
        for k in range(1, n + 1)
    ]


@st.composite
def scenarios(draw):
    family = draw(st.sampled_from([4, 6]))
    n = draw(st.integers(1, 3))
    routers = _routers(
        n,
        draw(st.lists(st.floats(0, 6), min_size=n, max_size=n)),
        draw(st.lists(st.sampled_from([0.05, 0.25, 1.0]), min_size=n, max_size=n)),
    )
    ports = draw(st.lists(st.integers(20, 80), min_size=1, max_size=14, unique=True))
    path = Path(routers, echo=draw(st.booleans()))
    for port in ports:
        where = draw(st.integers(0, n))  # 0: the destination decides
        if where == 0:
            path.ports[port] = draw(
                st.sampled_from([OPEN, CLOSED, DROP, *(icmp(c) for c in DEST_CODES[family])])
            )
        else:
            routers[where - 1].ports[port] = draw(
                st.sampled_from([DROP, FORGE_RST, *(icmp(c) for c in ROUTER_CODES[family])])
            )
    return family, path, ports


def _batch(family: int, path: Path, ports: list[int], seed: int = 0, **opts) -> SynBatch:
    dest = path.dest4 if family == 4 else path.dest6
    targets = [Target("mx.test", dest, p) for p in ports]
    return SynBatch(targets, {dest: CLIENT[family]}, Options(**opts), random.Random(seed))


def _check(family, path, results):
    for r in results:
        expected = path.expected(r.port, family)
        assert r.verdict == expected, (r.port, r.verdict, expected, r.reason)
        dest_hop = len(path.routers) + 1
        if r.verdict in (Verdict.OPEN, Verdict.REFUSED):
            assert r.responder_hop == dest_hop
        for k, router in enumerate(path.routers, start=1):
            if r.port in router.ports and r.verdict is not Verdict.FILTERED:
                assert r.responder_hop == k, (r.port, r.reason)
                if r.verdict is Verdict.RESET_IN_PATH:
                    assert r.destination_hop in (dest_hop, None)
                break


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 2**32))
def test_verdicts_match_the_path_whatever_the_rate_limits(scenario, seed):
    family, path, ports = scenario
    batch = _batch(family, path, ports, seed)
    run(batch, SimNet(path))
    _check(family, path, batch.results())


class HostileNet(SimNet):
    """Answers every probe with near-miss forgeries as well: wrong ack, wrong quoted seq,
    someone else's quoted flow, bad checksums, wrong ports."""

    def transmit(self, send, now):
        super().transmit(send, now)
        if send.proto != wire.PROTO_TCP:
            return
        fam, dst, me = send.family, send.dst, send.src
        sport, dport = int.from_bytes(send.payload[:2], "big"), int.from_bytes(send.payload[2:4], "big")
        seq = int.from_bytes(send.payload[4:8], "big")
        when = now + 0.0005

        def tcp(src, sp, dp, ack, flags, corrupt=False):
            seg = bytearray(wire.tcp_segment(src, me, sp, dp, 99, ack=ack, flags=flags, mss=None))
            if corrupt:
                seg[16] ^= 0xFF
            self.inject(when, wire.Datagram(fam, src, me, 64, wire.PROTO_TCP, bytes(seg)))

        ack = (seq + 1) & 0xFFFFFFFF
        tcp(dst, dport, sport, (seq + 2) & 0xFFFFFFFF, wire.RST | wire.ACK)  # wrong ack
        tcp(dst, dport, sport, seq, wire.SYN | wire.ACK)  # off by one
        tcp(dst, dport, sport, ack, wire.SYN | wire.ACK, corrupt=True)  # bad checksum
        tcp(dst, dport + 1, sport, ack, wire.RST | wire.ACK)  # wrong port
        other = "198.18.1.77" if fam == 4 else "2001:db8:1::77"
        tcp(other, dport, sport, ack, wire.SYN | wire.ACK)  # right numbers, wrong host
        for quoted_src, quoted_seq in ((me, seq + 1), (other, seq)):
            inner = wire.tcp_segment(quoted_src, dst, sport, dport, quoted_seq)
            if fam == 4:
                quote = wire.ipv4_packet(quoted_src, dst, 6, inner, ttl=1, ident=1)[:28]
                body = bytes([3, 13, 0, 0, 0, 0, 0, 0]) + quote
                msg = body[:2] + wire.checksum(body).to_bytes(2, "big") + body[4:]
                self.inject(when, wire.Datagram(4, "198.18.1.254", me, 64, 1, msg))
            else:
                quote = _ipv6_header(quoted_src, dst, len(inner)) + inner
                body = bytes([1, 1, 0, 0, 0, 0, 0, 0]) + quote
                csum = wire.checksum(wire.pseudo_header("2001:db8:1::fe", me, 58, len(body)) + body)
                msg = body[:2] + csum.to_bytes(2, "big") + body[4:]
                self.inject(when, wire.Datagram(6, "2001:db8:1::fe", me, 64, 58, msg))


def _ipv6_header(src: str, dst: str, length: int) -> bytes:
    from ipaddress import IPv6Address

    return (
        bytes([0x60, 0, 0, 0])
        + length.to_bytes(2, "big")
        + bytes([6, 64])
        + IPv6Address(src).packed
        + IPv6Address(dst).packed
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 2**32))
def test_forged_near_misses_never_change_a_verdict(scenario, seed):
    family, path, ports = scenario
    batch = _batch(family, path, ports, seed)
    run(batch, HostileNet(path))
    _check(family, path, batch.results())


def test_many_rejects_behind_a_drained_router_are_not_filtered():
    """40 ports rejected by a router whose ICMP bucket is empty at the start."""
    r1 = Router(
        "198.18.1.254", "2001:db8:1::fe", initial_tokens=0, ports={p: icmp(13) for p in range(1000, 1040)}
    )
    path = Path([r1, Router("198.18.2.254", "2001:db8:2::fe")], ports={25: OPEN})
    batch = _batch(4, path, [25, *range(1000, 1040)], retries=1)
    elapsed = run(batch, SimNet(path))
    results = batch.results()
    assert [r.verdict for r in results] == [Verdict.OPEN] + [Verdict.REJECTED] * 40
    assert elapsed < 40 * 1.2 + 5  # about one ICMP per router interval, no more


def test_answered_batch_finishes_in_about_one_round_trip():
    path = Path(_routers(2, [6, 6], [1, 1]), ports={25: OPEN, 587: OPEN})
    batch = _batch(4, path, [25, 465, 587])
    assert run(batch, SimNet(path)) < 0.05  # refused 465 is placed by the SYN-ACKs' hop


def test_forged_rst_is_placed_by_a_ttl_limited_syn_when_echo_is_blocked():
    r1, r2 = _routers(2, [6, 6], [1, 1])
    r2.ports[25] = FORGE_RST
    path = Path([r1, r2], echo=False)
    batch = _batch(6, path, [25])
    run(batch, SimNet(path))
    (r,) = batch.results()
    assert r.verdict is Verdict.RESET_IN_PATH and r.responder_hop == 2 and r.destination_hop is None
    assert "TTL 2 expired" in r.reason


def test_unplaceable_rst_says_so():
    r1, r2 = _routers(2, [6, 6], [1, 1])
    r1.silent = r2.silent = True
    r2.ports[25] = FORGE_RST
    path = Path([r1, r2], echo=False)
    batch = _batch(4, path, [25], retries=1, timeout=0.5)
    run(batch, SimNet(path))
    (r,) = batch.results()
    assert r.verdict is Verdict.REFUSED and "could not be confirmed" in r.reason


def test_local_route_errors_need_no_packets():
    t = [Target("x", "198.18.9.9", 25), Target("y", "198.18.8.8", 25), Target("z", "198.18.7.7", 25)]
    batch = SynBatch(
        t,
        {"198.18.9.9": errno.ENETUNREACH, "198.18.8.8": errno.EACCES, "198.18.7.7": errno.EINVAL},
        Options(),
    )
    net = SimNet(Path([]))
    run(batch, net)
    assert net.sent == 0
    assert [r.verdict for r in batch.results()] == [Verdict.UNREACHABLE, Verdict.REJECTED, Verdict.FILTERED]
    assert {r.responder for r in batch.results()} == {"local"}


def test_local_firewall_refusing_a_send():
    batch = _batch(4, Path([]), [25])
    sends = batch.poll(0.0)
    batch.send_failed(sends[0], errno.EPERM, 0.0)
    batch.poll(0.1)
    assert batch.done
    (r,) = batch.results()
    assert r.verdict is Verdict.REJECTED and r.responder == "local" and "EPERM" in r.reason


def test_full_send_queue_is_retried_not_judged():
    path = Path([], ports={25: OPEN})
    batch = _batch(4, path, [25])
    net = SimNet(path)
    first = batch.poll(0.0)
    batch.send_failed(first[0], errno.ENOBUFS, 0.0)
    run(batch, net)
    (r,) = batch.results()
    assert r.verdict is Verdict.OPEN and r.attempts == 1


def test_host_unreachable_after_a_failed_neighbour_lookup_is_waited_for():
    """The last router answers host-unreachable only when ARP fails, ~3 s after the SYN."""
    r1, r2 = _routers(2, [6, 6], [1, 1])
    r2.ports[25] = icmp(1, late=3.0)
    path = Path([r1, r2])
    batch = _batch(4, path, [25], retries=0, timeout=0.5)
    run(batch, SimNet(path))
    (r,) = batch.results()
    assert r.verdict is Verdict.UNREACHABLE and r.responder_hop == 2


def test_pace_budget_bounds_a_huge_unanswered_set_and_says_so():
    """500 dropped ports and one reject behind the same router: pacing all would take ~500 s."""
    r1 = Router("198.18.1.254", "2001:db8:1::fe", ports={p: DROP for p in range(2000, 2500)} | {113: icmp(3)})
    path = Path([r1])
    batch = _batch(4, path, [113, *range(2000, 2500)], retries=0, pace_budget=20.0)
    elapsed = run(batch, SimNet(path))
    results = batch.results()
    assert results[0].verdict is Verdict.REJECTED
    assert all(r.verdict is Verdict.FILTERED for r in results[1:])
    unconfirmed = [r for r in results[1:] if "not confirmed" in r.reason]
    assert unconfirmed and elapsed < 20 + 10


def test_a_syn_ack_from_a_nearer_hop_is_called_an_interception():
    r1, r2 = _routers(2, [6, 6], [1, 1])
    r1.ports[25] = FORGE_SYNACK  # a transparent SMTP proxy on the first router
    path = Path([r1, r2], ports={587: OPEN})
    batch = _batch(4, path, [25, 587])
    run(batch, SimNet(path))
    intercepted, genuine = batch.results()
    assert intercepted.verdict is genuine.verdict is Verdict.OPEN
    assert intercepted.responder_hop == 1 and intercepted.destination_hop == 3
    assert "a device in the path answered" in intercepted.reason and "device" not in genuine.reason


def test_echo_answer_ends_the_wait_for_the_ttl_limited_syn():
    """The forging router never sends time-exceeded, so the SYN with TTL 2 gets no answer;
    the echo already placed the destination at hop 3, so nobody waits for that SYN."""
    r1, r2 = _routers(2, [6, 6], [1, 1])
    r2.silent = True
    r2.ports[25] = FORGE_RST
    path = Path([r1, r2])
    batch = _batch(4, path, [25])
    elapsed = run(batch, SimNet(path))
    (r,) = batch.results()
    assert r.verdict is Verdict.RESET_IN_PATH and r.destination_hop == 3
    assert elapsed < 0.1


# -- replies this host's kernel dropped ---------------------------------------------------


def _lose(indices: set[int]):
    return lambda index, when, dg: index in indices


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenarios(), st.integers(0, 2**32), st.integers(0, 2), st.sets(st.integers(0, 30), min_size=1, max_size=6)
)
def test_dropped_replies_change_the_time_never_a_verdict(scenario, seed, retries, lost):
    """Whichever replies the kernel drops (SYN-ACK, RST, ICMP error, echo reply, time
    exceeded), a verdict a run without drops gets right stays right."""
    family, path, ports = scenario
    calm = _batch(family, path, ports, seed, retries=retries)
    run(calm, SimNet(copy.deepcopy(path)))
    batch = _batch(family, path, ports, seed, retries=retries)
    net = SimNet(path, lose=_lose(lost))
    run(batch, net)
    assert batch.drops == net.dropped
    for lossy, quiet in zip(batch.results(), calm.results(), strict=True):
        if quiet.verdict == path.expected(quiet.port, family):  # few retries may miss a reject
            assert (lossy.verdict, lossy.responder_hop) == (quiet.verdict, quiet.responder_hop), lossy
    if retries == 2:  # the default: every verdict is right
        _check(family, path, batch.results())


def test_a_receive_queue_overflow_during_the_burst_reasks_what_it_may_have_hidden():
    """300 refused and 300 dropped ports; every reply arriving in the first 20 ms is lost (a
    driver starved of CPU while its queue overflowed). No refused port may read as filtered."""
    path = Path(_routers(2, [6, 6], [1, 1]), ports=dict.fromkeys(range(1000, 1300), CLOSED))
    path.routers[1].ports.update(dict.fromkeys(range(2000, 2300), DROP))
    ports = [*range(1000, 1300), *range(2000, 2300)]
    net = SimNet(path, lose=lambda index, when, dg: when < 0.02)
    batch = _batch(4, path, ports, retries=0, rate=10000)
    elapsed = run(batch, net)
    results = batch.results()
    assert net.dropped > 50 and batch.drops == net.dropped
    assert [r.verdict for r in results] == [Verdict.REFUSED] * 300 + [Verdict.FILTERED] * 300
    assert any(r.attempts > 1 for r in results[:300])  # some were asked again...
    assert all("asked again" in r.reason for r in results[300:] if r.attempts > 1)  # ...and say so
    assert elapsed < 3.5 + 2 * 1.0 + 1  # one more listening round, not a rerun of everything


def test_silence_declared_before_the_drops_is_not_asked_again():
    path = Path(_routers(1, [6], [1]))
    path.routers[0].ports[25] = DROP
    batch = _batch(4, path, [25], retries=0)
    end = run(batch, SimNet(path))
    assert batch.done
    batch.dropped(3, end + 10.0, since=end + 9.0)  # lost long after the probe stopped listening
    assert batch.done and batch.results()[0].attempts == 1
    batch.dropped(1, end + 11.0)  # lost at some unknown time: it may have been its answer
    assert not batch.done
    net = SimNet(path)
    sends = batch.poll(end + 11.0)
    assert len(sends) == 1 and sends[0].dst == path.dest4
    for s in sends:
        net.transmit(s, end + 11.0)
    run_from(batch, net, end + 11.0)
    (r,) = batch.results()
    assert r.verdict is Verdict.FILTERED and r.attempts == 2 and "asked again" in r.reason


def run_from(machine, net: SimNet, now: float) -> float:
    while not machine.done:
        wake = machine.next_wakeup(now)
        nxt = net.next_delivery()
        now = max(now, min(wake, nxt) if nxt is not None else wake)
        for dg in net.deliver_until(now):
            machine.feed(dg, now)
        for send in machine.poll(now):
            net.transmit(send, now)
    return now


def test_a_reply_after_the_probe_was_declared_silent_still_counts():
    """A RST read after the probe's timer ended (the driver was starved): it is the answer."""
    path = Path([], ports={25: CLOSED}, delay=2.5)  # the RST comes 5 s after the SYN
    batch = _batch(4, path, [25], retries=0)
    net = SimNet(path)
    for s in batch.poll(0.0):
        net.transmit(s, 0.0)
    batch.poll(4.0)  # its one try listened min_wait (3.5 s): silent
    assert batch.results()[0].verdict is Verdict.FILTERED
    for dg in net.deliver_until(5.0):
        batch.feed(dg, 5.0)
    assert batch.results()[0].verdict is Verdict.REFUSED


def test_drops_that_never_stop_end_the_batch_and_say_so():
    path = Path([], ports={25: CLOSED, 26: OPEN})
    net = SimNet(path, lose=lambda index, when, dg: True)  # every reply lost
    batch = _batch(4, path, [25, 26], retries=1, timeout=0.2)
    elapsed = run(batch, net)
    for r in batch.results():
        assert r.verdict is Verdict.FILTERED and "not confirmed" in r.reason
    assert elapsed < 30


def test_drops_slow_the_sending_down():
    path = Path([], ports=dict.fromkeys(range(1000, 3000), CLOSED))
    calm = _batch(4, path, list(range(1000, 3000)), retries=0, rate=20000, burst=64)
    t_calm = run(calm, SimNet(path))
    lossy = _batch(4, path, list(range(1000, 3000)), retries=0, rate=20000, burst=64)
    t_lossy = run(lossy, SimNet(path, lose=lambda index, when, dg: index in (5, 6, 7)))
    assert all(r.verdict is Verdict.REFUSED for r in lossy.results())
    assert lossy._rate < calm._rate and t_lossy > t_calm
