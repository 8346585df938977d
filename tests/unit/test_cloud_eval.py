"""The cloud rule evaluator against brute-force references on random rule sets."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.cloud.evaluate import (
    Context,
    Interface,
    evaluate,
    longest_prefix_route,
    nacl_decision,
    nacl_denied_ranges,
    security_groups,
)

CIDRS4 = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "198.51.100.0/24", "198.51.100.7/32"]
CIDRS6 = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::7/128"]
ADDRS = ["10.1.2.3", "10.9.9.9", "198.51.100.7", "203.0.113.1", "2001:db8:1::7", "2001:db8:2::1", "2600::1"]


def _contains(cidr: str, addr: str) -> bool:
    """Reference containment by integer masks, not by the ipaddress ``in`` operator."""
    net, a = ip_network(cidr), ip_address(addr)
    if net.version != a.version:
        return False
    bits = net.max_prefixlen
    mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
    return int(a) & mask == int(net.network_address)


ports = st.integers(0, 65535)


@st.composite
def nacl_entry(draw, egress):
    proto = draw(st.sampled_from(["-1", "6", "17"]))
    e = {
        "RuleNumber": draw(st.integers(1, 32766)),
        "Egress": egress,
        "RuleAction": draw(st.sampled_from(["allow", "deny"])),
        "Protocol": proto,
    }
    if draw(st.booleans()):
        e["CidrBlock"] = draw(st.sampled_from(CIDRS4))
    else:
        e["Ipv6CidrBlock"] = draw(st.sampled_from(CIDRS6))
    if proto != "-1":
        a, b = sorted(draw(st.tuples(ports, ports)))
        e["PortRange"] = {"From": a, "To": b}
    return e


def nacls(egress):
    return st.lists(nacl_entry(egress), max_size=8, unique_by=lambda e: e["RuleNumber"]).map(
        lambda es: {"NetworkAclId": "acl-1", "Entries": es}
    )


def reference_nacl(nacl, egress, addr, port):
    """Brute force: of all matching entries, the lowest number; nothing matching denies."""
    key = "Ipv6CidrBlock" if ":" in addr else "CidrBlock"
    matching = [
        e
        for e in nacl["Entries"]
        if e["Egress"] == egress
        and e.get(key)
        and _contains(e[key], addr)
        and e["Protocol"] in ("-1", "6")
        and (e["Protocol"] == "-1" or e["PortRange"]["From"] <= port <= e["PortRange"]["To"])
    ]
    return min(matching, key=lambda e: e["RuleNumber"])["RuleAction"] if matching else "deny"


@settings(max_examples=300)
@given(nacls(True), st.sampled_from(ADDRS), ports)
def test_nacl_first_match_wins(nacl, addr, port):
    assert nacl_decision(nacl, True, ip_address(addr), port)["RuleAction"] == reference_nacl(
        nacl, True, addr, port
    )


@settings(max_examples=40, deadline=None)
@given(nacls(False), st.sampled_from(ADDRS), st.integers(1024, 65535), st.integers(0, 3000))
def test_denied_ranges_match_port_by_port(nacl, addr, lo, width):
    hi = min(65535, lo + width)
    denied = {
        p for a, b, _ in nacl_denied_ranges(nacl, False, ip_address(addr), lo, hi) for p in range(a, b + 1)
    }
    assert denied == {p for p in range(lo, hi + 1) if reference_nacl(nacl, False, addr, p) == "deny"}


@st.composite
def sg_rule(draw):
    proto = draw(st.sampled_from(["-1", "tcp", "6", "udp"]))
    perm = {
        "IpProtocol": proto,
        "IpRanges": [],
        "Ipv6Ranges": [],
        "PrefixListIds": [],
        "UserIdGroupPairs": [],
    }
    if proto != "-1":
        a, b = sorted(draw(st.tuples(ports, ports)))
        perm.update(FromPort=a, ToPort=b)
    kind = draw(st.sampled_from(["v4", "v6", "pl", "sg"]))
    if kind == "v4":
        perm["IpRanges"] = [{"CidrIp": draw(st.sampled_from(CIDRS4))}]
    elif kind == "v6":
        perm["Ipv6Ranges"] = [{"CidrIpv6": draw(st.sampled_from(CIDRS6))}]
    elif kind == "pl":
        perm["PrefixListIds"] = [{"PrefixListId": "pl-1"}]
    else:
        perm["UserIdGroupPairs"] = [{"GroupId": "sg-peer"}]
    return perm


CTX = Context(
    provider=None,
    source=Interface("eni-1", "subnet-1", "vpc-1"),
    prefix_lists={"pl-1": ["198.51.100.0/24", "2001:db8:1::/48"]},
    group_members={"sg-peer": ["10.1.2.3"]},
)


def reference_sg(groups, addr, port):
    for g in groups:
        for p in g["IpPermissionsEgress"]:
            if p["IpProtocol"] not in ("-1", "tcp", "6"):
                continue
            if p["IpProtocol"] != "-1" and not p["FromPort"] <= port <= p["ToPort"]:
                continue
            cidrs = [r["CidrIp"] for r in p["IpRanges"]] + [r["CidrIpv6"] for r in p["Ipv6Ranges"]]
            cidrs += [c for r in p["PrefixListIds"] for c in CTX.prefix_lists[r["PrefixListId"]]]
            if any(_contains(c, addr) for c in cidrs) or any(
                addr in CTX.group_members[r["GroupId"]] for r in p["UserIdGroupPairs"]
            ):
                return True
    return False


@settings(max_examples=300)
@given(st.lists(st.lists(sg_rule(), max_size=4), max_size=3), st.sampled_from(ADDRS), ports)
def test_security_groups_are_a_union(rule_sets, addr, port):
    groups = [{"GroupId": f"sg-{i}", "IpPermissionsEgress": rules} for i, rules in enumerate(rule_sets)]
    got = security_groups(groups, ip_address(addr), port, CTX, egress=True) is not None
    assert got == reference_sg(groups, addr, port)


@given(st.lists(st.sampled_from(CIDRS4 + CIDRS6), max_size=6), st.sampled_from(ADDRS))
def test_longest_prefix_match(cidrs, addr):
    routes = [
        {"DestinationIpv6CidrBlock" if ":" in c else "DestinationCidrBlock": c, "GatewayId": f"gw-{i}"}
        for i, c in enumerate(cidrs)
    ]
    found = longest_prefix_route({"Routes": routes}, ip_address(addr), {})
    containing = [c for c in cidrs if _contains(c, addr)]
    if not containing:
        assert found is None
    else:
        assert ip_network(found[1]).prefixlen == max(ip_network(c).prefixlen for c in containing)


def test_custom_acl_without_star_rule_denies():
    """moto (and some tools) omit the '*' entries; the implicit deny must still apply."""
    nacl = {"NetworkAclId": "acl-1", "Entries": []}
    assert nacl_decision(nacl, True, ip_address("198.51.100.7"), 25)["RuleAction"] == "deny"


def test_ipv4_rules_never_match_ipv6():
    nacl = {
        "NetworkAclId": "acl-1",
        "Entries": [
            {
                "RuleNumber": 100,
                "Egress": True,
                "RuleAction": "allow",
                "Protocol": "-1",
                "CidrBlock": "0.0.0.0/0",
            }
        ],
    }
    assert nacl_decision(nacl, True, ip_address("2001:db8::1"), 25)["RuleAction"] == "deny"


def _open_world(provider="aws", public_ip="203.0.113.10"):
    allow_all = [
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ]
    acl = {
        "NetworkAclId": "acl-1",
        "Entries": [
            {
                "RuleNumber": 100,
                "Egress": e,
                "RuleAction": "allow",
                "Protocol": "-1",
                "CidrBlock": "0.0.0.0/0",
            }
            for e in (True, False)
        ]
        + [
            {"RuleNumber": 101, "Egress": e, "RuleAction": "allow", "Protocol": "-1", "Ipv6CidrBlock": "::/0"}
            for e in (True, False)
        ],
    }
    routes = {
        "RouteTableId": "rtb-1",
        "Routes": [
            {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"},
            {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"},
            {"DestinationIpv6CidrBlock": "::/0", "GatewayId": "igw-1", "State": "active"},
        ],
    }
    src = Interface(
        "eni-1",
        "subnet-1",
        "vpc-1",
        ["10.0.1.5"],
        ["2001:db8:1::5"],
        public_ip,
        [{"GroupId": "sg-1", "IpPermissionsEgress": allow_all}],
        acl,
        routes,
    )
    return Context(provider=provider, source=src, vpc_cidrs=["10.0.0.0/16"])


def test_port_25_policy_applies_to_public_and_ipv6_only():
    ctx = _open_world()
    assert evaluate(ctx, "198.51.100.7", 587).verdict == "allowed"
    public = evaluate(ctx, "198.51.100.7", 25)
    assert public.verdict == "blocked" and [b.code for b in public.blockers] == ["PROVIDER_PORT_25_BLOCK"]
    assert not public.blockers[0].certain and "587" in public.blockers[0].message
    assert evaluate(ctx, "2001:db8:9::1", 25).verdict == "blocked"
    assert evaluate(ctx, "10.0.2.9", 25).verdict == "allowed"  # inside the VPC
    assert evaluate(ctx, "192.168.4.4", 25).verdict == "allowed"  # private IPv4
    assert evaluate(_open_world(provider=None), "198.51.100.7", 25).verdict == "allowed"


def test_no_public_ip_behind_an_internet_gateway():
    ev = evaluate(_open_world(public_ip=None), "198.51.100.7", 587)
    assert [b.code for b in ev.blockers] == ["IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS"]
    assert evaluate(_open_world(public_ip=None), "2001:db8:9::1", 587).verdict == "allowed"


def test_unread_components_make_the_verdict_unknown():
    ctx = _open_world()
    ctx.source.nacl = None
    ctx.unchecked["network-acl"] = "ec2:DescribeNetworkAcls"
    ev = evaluate(ctx, "198.51.100.7", 587)
    assert ev.verdict == "unknown"
    assert any("needs ec2:DescribeNetworkAcls" in c["detail"] for c in ev.checked)


def test_provider_from_dmi():
    from mailpath.cloud.provider import AZURE_ASSET_TAG, provider_from_dmi, read_dmi

    assert provider_from_dmi({"sys_vendor": "Amazon EC2", "product_name": "m5.large"}) == "aws"
    assert provider_from_dmi({"bios_vendor": "Amazon EC2", "sys_vendor": "Xen"}) == "aws"
    assert provider_from_dmi({"sys_vendor": "Google", "product_name": "Google Compute Engine"}) == "gcp"
    assert (
        provider_from_dmi({"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": AZURE_ASSET_TAG})
        == "azure"
    )
    assert provider_from_dmi({"sys_vendor": "QEMU", "product_name": "Standard PC"}) is None
    assert isinstance(read_dmi(), dict)  # whatever this machine is, reading never fails
