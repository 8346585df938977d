"""`mailpath probe` in the lab: real packets through real Linux routers and firewalls.

Topology (hops seen from the client): r1 = 1, r2 = 2, server = 3. Each case puts one fault
on one port; a single run probes all of them, over IPv4 and IPv6 at once.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import mailpath

pytestmark = pytest.mark.lab

# port -> (node, fault kind, fault, expected verdict, responder hop, ICMP code v4, ICMP code v6)
CASES = {
    25: (None, None, None, "open", 3, None, None),
    26: (None, None, None, "refused", 3, None, None),
    27: ("r1", "block", "tcp-reset", "reset-in-path", 1, None, None),
    28: ("r2", "block", "tcp-reset", "reset-in-path", 2, None, None),
    29: ("server", "block", "tcp-reset", "refused", 3, None, None),
    30: ("r1", "block", "admin-prohibited", "rejected", 1, 13, 1),
    31: ("r2", "block", "host-prohibited", "rejected", 2, 10, 1),
    32: ("server", "block", "port-unreachable", "rejected", 3, 3, 4),
    33: ("r2", "block", "drop", "filtered", None, None, None),
    34: ("server", "block", "drop", "filtered", None, None, None),
    35: ("r1", "route", "unreachable", "unreachable", 1, 1, 0),
    36: ("r2", "route", "prohibit", "rejected", 2, 13, 1),
    37: ("r1", "route", "blackhole", "filtered", None, None, None),
    38: ("r2", "block", "net-unreachable", "unreachable", 2, 0, 0),
}


def _apply(lab, port: int) -> None:
    node, kind, fault, *_ = CASES[port]
    if kind == "block":
        lab.block(node, port, fault)
    elif kind == "route":
        for family in (4, 6):
            lab.route(node, fault, port=port, family=family)


def test_every_verdict_in_one_mixed_batch(faults):
    lab = faults
    for port in CASES:
        _apply(lab, port)
    ports = ",".join(map(str, CASES))
    run = mailpath(lab, "probe", "mail.lab.test", "-p", ports, "--timeout", "0.5", "--retries", "1", "--json")
    assert run.code == 1, run.stderr
    results = run.json["results"]
    assert len(results) == 2 * len(CASES)
    seen = set()
    for r in results:
        family = 6 if ":" in r["address"] else 4
        _, _, _, verdict, hop, code4, code6 = CASES[r["port"]]
        where = f"{r['address']}:{r['port']}: {r['reason']}"
        assert r["verdict"] == verdict, where
        assert r["responder_hop"] == hop, where
        assert r["method"] == "raw" and r["host"] == "mail.lab.test"
        code = code4 if family == 4 else code6
        if code is None:
            assert r["icmp"] is None, where
        else:
            assert (r["icmp"]["type"], r["icmp"]["code"]) == ((3 if family == 4 else 1), code), where
        if verdict == "reset-in-path":
            assert r["responder"] == r["address"]  # the forged RST claims to be the server
            assert r["destination_hop"] == 3
        if verdict in ("rejected", "unreachable") and hop in (1, 2):
            assert r["responder"] == lab.addr(f"r{hop}", family)
        if verdict in ("open", "refused"):
            assert r["destination_hop"] == 3 and r["rtt_ms"] > 0
        assert set(r) >= {
            "host",
            "address",
            "port",
            "verdict",
            "responder",
            "responder_hop",
            "destination_hop",
            "icmp",
            "rtt_ms",
            "attempts",
            "method",
            "reason",
        }
        seen.add((family, r["port"]))
    assert len(seen) == 2 * len(CASES)


def test_many_rejects_through_one_rate_limited_router_stay_rejected():
    """30 ports rejected by r1: its ICMP burst runs out after ~6, yet none may read as filtered."""
    from lab import Lab

    with Lab() as lab:  # fresh router: its ICMP token bucket starts full, as on a quiet path
        lab.block("r1", "40000:40029", "admin-prohibited", family=4)
        lab.block("r2", "40030:40031", "drop", family=4)
        run = mailpath(
            lab, "probe", lab.server4, "-p", "40000-40031", "--timeout", "0.5", "--retries", "1", "--json"
        )
    verdicts = [r["verdict"] for r in run.json["results"]]
    assert verdicts == ["rejected"] * 30 + ["filtered"] * 2, run.stdout


def test_forged_near_misses_do_not_change_verdicts(faults):
    lab = faults
    lab.block("r2", 33, "drop")
    spoofer = lab.popen(
        "r1", [sys.executable, "-m", "tests.lab.spoofer", "client"], stdout=subprocess.PIPE, text=True
    )
    assert spoofer.stdout.readline().strip() == "ready"
    import time

    time.sleep(0.5)  # let the sniffer socket settle
    run = mailpath(
        lab, "probe", "mail.lab.test", "-p", "25,26,33", "--timeout", "0.5", "--retries", "1", "--json"
    )
    spoofer.terminate()
    answered = int(spoofer.stdout.readline() or 0)
    assert answered >= 6, "the spoofer saw no SYNs: the test proves nothing"
    got = {(r["address"], r["port"]): r["verdict"] for r in run.json["results"]}
    for address in (lab.server4, lab.server6):
        assert got[(address, 25)] == "open"
        assert got[(address, 26)] == "refused"
        assert got[(address, 33)] == "filtered"


def test_missing_host_behind_the_last_router_is_unreachable(lab):
    """r2 answers host/address-unreachable only after ARP/ND fails, about 3 s later."""
    run = mailpath(
        lab, "probe", "198.18.3.99:25", "[2001:db8:3::99]:25", "--timeout", "0.5", "--retries", "0", "--json"
    )
    for r in run.json["results"]:
        assert r["verdict"] == "unreachable" and r["responder_hop"] == 2, r
        assert r["icmp"]["code"] == (1 if r["address"] == "198.18.3.99" else 3)


def test_local_routes_and_firewall(faults):
    lab = faults
    lab.route("client", "unreachable", dest="198.18.100.0/24")
    lab.route("client", "prohibit", dest="198.18.101.0/24")
    lab.route("client", "blackhole", dest="198.18.102.0/24")
    lab.sh("client", "iptables -A OUTPUT -p tcp --dport 2525 -j DROP")
    run = mailpath(
        lab,
        "probe",
        "198.18.100.1:25",
        "198.18.101.1:25",
        "198.18.102.1:25",
        f"{lab.server4}:2525",
        "--timeout",
        "0.3",
        "--retries",
        "0",
        "--json",
    )
    got = [(r["verdict"], r["responder"], r["responder_hop"]) for r in run.json["results"]]
    assert got == [
        ("unreachable", "local", 0),
        ("rejected", "local", 0),
        ("filtered", "local", 0),
        ("rejected", "local", 0),
    ]


def test_half_open_leaves_no_connection_behind(lab):
    run = mailpath(lab, "probe", lab.server4, "-p", "25,465,587", "--json")
    assert run.code == 0 and {r["verdict"] for r in run.json["results"]} == {"open"}
    import time

    time.sleep(0.2)
    states = lab.exec("server", ["ss", "-Htan", "state", "syn-recv", "state", "established"]).stdout
    assert states.strip() == ""


def test_connect_fallback_without_cap_net_raw(faults):
    lab = faults
    lab.block("r1", 27, "tcp-reset")
    lab.block("r1", 30, "admin-prohibited")
    lab.block("r2", 33, "drop")
    no_raw = ("setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--")
    run = mailpath(
        lab,
        "probe",
        lab.server4,
        "[" + lab.server6 + "]:30",
        "-p",
        "25,26,27,30,33",
        "--timeout",
        "0.5",
        "--retries",
        "0",
        "--json",
        wrap=no_raw,
    )
    got = {(r["address"], r["port"]): r for r in run.json["results"]}
    assert {r["method"] for r in got.values()} == {"connect"}
    v4, v6 = lab.server4, lab.server6
    assert got[(v4, 25)]["verdict"] == "open"
    assert got[(v4, 26)]["verdict"] == "refused"
    assert got[(v4, 27)]["verdict"] == "refused"  # connect() cannot see the forgery...
    assert "forged" in got[(v4, 27)]["limitations"][0]  # ...and says so
    for address, code in ((v4, 13), (v6, 1)):  # the ICMP comes from the socket's error queue
        r = got[(address, 30)]
        assert r["verdict"] == "rejected" and r["icmp"]["code"] == code, r
        assert r["responder"] == lab.addr("r1", 6 if address == v6 else 4)
    assert got[(v4, 33)]["verdict"] == "filtered"
    forced = mailpath(lab, "probe", v4, "-p", "25", "--method", "raw", wrap=no_raw)
    assert forced.code == 3 and "CAP_NET_RAW" in forced.stderr and len(forced.stderr.splitlines()) == 1


def test_exit_codes_and_bad_input(lab):
    assert mailpath(lab, "probe", lab.server4, "-p", "25").code == 0
    assert mailpath(lab, "probe", lab.server4, "-p", "25,26").code == 1
    for args, names in (
        (("probe", lab.server4, "-p", "70000"), "70000"),
        (("probe", "no-such-host.lab.test"), "no-such-host.lab.test"),
        (("probe", "bad_host!:25"), "bad_host!"),
        (("probe", lab.server4, "--timeout", "soon"), "--timeout"),
    ):
        run = mailpath(lab, *args)
        assert run.code == 2 and names in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_human_output_is_a_table(lab):
    run = mailpath(lab, "probe", "v4only.lab.test", "-p", "25,26")
    assert run.code == 1
    assert "open" in run.stdout and "refused" in run.stdout and lab.server4 in run.stdout


def test_lab_is_removed_even_when_the_body_fails():
    from lab import Lab

    names = []
    with pytest.raises(RuntimeError), Lab() as lab:
        names = [lab.ns(n) for n in ("client", "r1", "r2", "server")]
        lab.listen([25])
        raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert names and not any(n in listed for n in names)


def test_a_router_as_the_destination(lab):
    """r1 itself at hop 1: its own RST is genuine (a SYN with TTL 1 still reaches it)."""
    for address in (lab.addr("r1", 4), lab.addr("r1", 6)):
        target = f"[{address}]:2600" if ":" in address else f"{address}:2600"
        run = mailpath(lab, "probe", target, "--timeout", "0.5", "--json")
        (r,) = run.json["results"]
        assert (r["verdict"], r["responder_hop"], r["destination_hop"]) == ("refused", 1, 1), r


def test_a_transparent_proxy_on_the_path_is_named(faults):
    """r1 redirects 2526 to a listener of its own (what an intercepting SMTP proxy does):
    the SYN-ACK carries the server's address but comes from hop 1."""
    lab = faults
    lab.listen([2526], node="r1")
    lab.sh("r1", "iptables -t nat -A PREROUTING -p tcp --dport 2526 -j REDIRECT --to-ports 2526")
    try:
        run = mailpath(lab, "probe", lab.server4, "-p", "25,2526", "--json")
    finally:
        lab.sh("r1", "iptables -t nat -F")
    genuine, proxied = run.json["results"]
    assert genuine["verdict"] == proxied["verdict"] == "open"
    assert proxied["responder"] == lab.server4 and proxied["responder_hop"] == 1
    assert proxied["destination_hop"] == 3 and "a device in the path answered" in proxied["reason"]


def test_sweep_removes_only_the_namespaces_of_dead_runs_of_this_lab():
    """A lab whose process was killed (no cleanup) is swept; a namespace that merely looks like
    a lab's, and a live lab, are left alone."""
    from lab import Lab, sweep

    code = "from lab import Lab; lab = Lab().up(); print(lab.prefix, flush=True); import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    foreign = "mpf0reign-client"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        with Lab() as live:
            dead = child.stdout.readline().strip()
            child.kill()
            child.wait()
            removed = sweep()
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert sorted(removed) == sorted(f"{dead}-{n}" for n in ("client", "r1", "r2", "server"))
            assert foreign in listed and live.ns("client") in listed
            assert not any(f"{dead}-" in line for line in listed.splitlines())
    finally:
        child.kill()
        subprocess.run(["ip", "netns", "del", foreign], check=False)
