"""The cloud rule evaluator against brute-force references on random rule sets."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from mailpath.cloud.evaluate import (
    Context,
    Interface,
    Subnet,
    evaluate,
    longest_prefix_route,
    missing_permissions,
    nacl_decision,
    nacl_denied_ranges,
    policy_only,
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
    igw = {"InternetGatewayId": "igw-1", "Attachments": [{"State": "available", "VpcId": "vpc-1"}]}
    return Context(provider=provider, source=src, vpc_cidrs=["10.0.0.0/16"], gateways={"igw-1": igw})


def codes(ev) -> list[tuple[str, str, str | None, str | None]]:
    return [(b.component, b.code, b.id, b.rule) for b in ev.blockers]


def test_port_25_policy_applies_to_public_and_ipv6_only():
    ctx = _open_world()
    assert evaluate(ctx, "198.51.100.7", 587).verdict == "allowed"
    public = evaluate(ctx, "198.51.100.7", 25)
    assert public.verdict == "likely-blocked" and [b.code for b in public.blockers] == [
        "PROVIDER_PORT_25_BLOCK"
    ]
    assert not public.blockers[0].certain and "587" in public.blockers[0].message
    (policy,) = [c for c in public.checked if c["component"] == "provider-policy"]
    assert policy["result"] == "likely-blocked"  # nowhere called blocked
    assert evaluate(ctx, "2001:db8:9::1", 25).verdict == "likely-blocked"
    assert evaluate(ctx, "10.0.2.9", 25).verdict == "allowed"  # inside the VPC
    assert evaluate(ctx, "fd12:3456::25", 25).verdict == "allowed"  # IPv6 unique local (ULA)
    private = evaluate(ctx, "192.168.4.4", 25)  # private IPv4: no policy (the IGW drops it, though)
    assert [b.component for b in private.blockers] == ["internet-gateway"]
    assert evaluate(_open_world(provider=None), "198.51.100.7", 25).verdict == "allowed"


def test_verdicts_certain_blocked_before_likely():
    """``blocked`` only for a component that certainly blocks; a provider policy alone is
    ``likely-blocked``; with both, ``blocked``."""
    ctx = _open_world()
    ctx.source.groups = [{"GroupId": "sg-1", "IpPermissionsEgress": []}]
    ev = evaluate(ctx, "198.51.100.7", 25)
    assert ev.verdict == "blocked" and [b.certain for b in ev.blockers] == [True, False]
    assert evaluate(_open_world(), "198.51.100.7", 25).verdict == "likely-blocked"


def test_destinations_the_cloud_never_carries():
    """Loopback, unspecified and link-local never meet a security group, ACL, route or provider
    policy, whatever the provider and whether its configuration was read."""
    no_routes = _open_world()
    no_routes.source.route_table = {"RouteTableId": "rtb-1", "Routes": []}
    for ctx in (_open_world(), no_routes, policy_only("gcp", (32768, 60999))):
        for dest in (
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ):
            ev = evaluate(ctx, dest, 25)
            assert (ev.verdict, ev.blockers) == ("allowed", []), (dest, codes(ev))
            assert [c["component"] for c in ev.checked] == ["destination"]


def test_policy_only_providers():
    """GCP/Azure: the configuration is not read, so only the policy decides; what could not be
    checked says why."""
    for provider in ("gcp", "azure"):
        ctx = policy_only(provider, (32768, 60999))
        ev = evaluate(ctx, "198.51.100.7", 25)
        assert ev.verdict == "likely-blocked" and [b.code for b in ev.blockers] == ["PROVIDER_PORT_25_BLOCK"]
        for dest, port in (("198.51.100.7", 587), ("10.1.2.3", 25), ("172.20.0.1", 25), ("fd00::25", 25)):
            ev = evaluate(ctx, dest, port)
            assert ev.verdict == "unknown" and ev.blockers == [], (provider, dest, port)
            (unread,) = [c for c in ev.checked if c["result"] == "unknown"]
            assert (
                unread["detail"]
                == f"could not check firewall: {provider} firewall rules are not read by mailpath"
            )


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


def test_every_could_not_check_says_why():
    ctx = _open_world()
    ctx.source.route_table = None
    ctx.unchecked["route-table"] = "no route table is associated with subnet-1, nor a main one in vpc-1"
    ctx.unchecked["interface"] = "ec2:DescribeInstances"
    ev = evaluate(ctx, "198.51.100.7", 587)
    unread = {c["component"]: c["detail"] for c in ev.checked if c["result"] == "unknown"}
    assert unread == {
        "route-table": "could not check route-table: no route table is associated with subnet-1, nor a "
        "main one in vpc-1",
        "interface": "could not check interface: needs ec2:DescribeInstances",
    }
    ctx = _open_world()
    ctx.gateways, ctx.unread = {}, {"igw-1": "ec2:DescribeInternetGateways"}  # the IGW was not read
    ev = evaluate(ctx, "198.51.100.7", 587)
    assert ev.verdict == "unknown"
    (igw,) = [c for c in ev.checked if c["component"] == "internet-gateway"]
    assert igw["detail"] == "could not check internet-gateway igw-1: needs ec2:DescribeInternetGateways"
    ctx.source.route_table["Routes"][1]["GatewayId"] = "tgw-1"  # a path mailpath does not follow
    ev = evaluate(ctx, "198.51.100.7", 587)
    (tgw,) = [c for c in ev.checked if c["id"] == "tgw-1"]
    assert (
        ev.verdict == "unknown"
        and tgw["component"] == "transit-gateway"
        and "does not follow" in tgw["detail"]
    )


def test_internet_gateway_drops_private_and_shared_destinations():
    ctx = _open_world()
    assert codes(evaluate(ctx, "172.16.5.5", 587)) == [
        ("internet-gateway", "IGW_DESTINATION_ADDRESS_NOT_IN_RFC1918_EGRESS", "igw-1", None)
    ]
    assert codes(evaluate(ctx, "100.64.1.1", 587)) == [
        ("internet-gateway", "IGW_DESTINATION_ADDRESS_NOT_IN_RFC6598_EGRESS", "igw-1", None)
    ]
    ctx.gateways["igw-1"] = {"InternetGatewayId": "igw-1", "Attachments": []}
    assert codes(evaluate(ctx, "198.51.100.7", 587)) == [
        ("internet-gateway", "IGW_NOT_ATTACHED", "igw-1", None)
    ]


# -- the path through a NAT gateway (a private subnet, 10.0.1.0/24, out through nat-1 in the
# public subnet 10.0.0.0/24) and IPv6 through an egress-only internet gateway ---------------

ALLOW_ALL_ACL = [
    {"RuleNumber": 100, "Egress": e, "RuleAction": "allow", "Protocol": "-1", k: c}
    for e in (True, False)
    for k, c in (("CidrBlock", "0.0.0.0/0"), ("Ipv6CidrBlock", "::/0"))
]


def _acl(acl_id: str, entries: list[dict]) -> dict:
    return {"NetworkAclId": acl_id, "Entries": entries}


def _rule(number, egress, action, cidr, ports=None, proto="6"):
    e = {"RuleNumber": number, "Egress": egress, "RuleAction": action, "Protocol": proto, "CidrBlock": cidr}
    if ports:
        e["PortRange"] = {"From": ports[0], "To": ports[1]}
    return e


def _nat_world(**nat) -> Context:
    ctx = _open_world(public_ip=None)
    ctx.source.route_table = {
        "RouteTableId": "rtb-app",
        "Routes": [
            {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"},
            {"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1", "State": "active"},
            {"DestinationIpv6CidrBlock": "::/0", "EgressOnlyInternetGatewayId": "eigw-1", "State": "active"},
            {"DestinationIpv6CidrBlock": "64:ff9b::/96", "NatGatewayId": "nat-1", "State": "active"},
        ],
    }
    ctx.gateways = {
        "nat-1": {
            "NatGatewayId": "nat-1",
            "State": "available",
            "SubnetId": "subnet-pub",
            "ConnectivityType": "public",
            "NatGatewayAddresses": [{"PublicIp": "203.0.113.50", "PrivateIp": "10.0.0.9"}],
            **nat,
        },
        "igw-1": {"InternetGatewayId": "igw-1", "Attachments": [{"State": "available", "VpcId": "vpc-1"}]},
        "eigw-1": {"EgressOnlyInternetGatewayId": "eigw-1", "Attachments": [{"State": "attached"}]},
    }
    ctx.subnets = {
        "subnet-pub": Subnet(
            "subnet-pub",
            _acl("acl-pub", ALLOW_ALL_ACL),
            {
                "RouteTableId": "rtb-pub",
                "Routes": [
                    {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"},
                    {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"},
                ],
            },
        )
    }
    return ctx


PUBLIC = "198.51.100.7"


def test_nat_path_allowed():
    ev = evaluate(_nat_world(), PUBLIC, 587)
    assert ev.verdict == "allowed", codes(ev)
    path = [(c["component"], c["direction"], c["id"]) for c in ev.checked]
    assert path == [
        ("security-group", "egress", "sg-1"),
        ("network-acl", "egress", "acl-1"),
        ("network-acl", "ingress", "acl-1"),
        ("route-table", "egress", "rtb-app"),
        ("nat-gateway", "egress", "nat-1"),
        ("network-acl", "ingress", "acl-pub"),  # our connection into the NAT gateway's subnet
        ("network-acl", "egress", "acl-pub"),  # on to the destination
        ("network-acl", "ingress", "acl-pub"),  # the replies, to the NAT gateway's 1024-65535
        ("network-acl", "egress", "acl-pub"),  # on to our ephemeral ports
        ("route-table", "egress", "rtb-pub"),
        ("internet-gateway", "egress", "igw-1"),
        ("provider-policy", "egress", "aws"),
    ]
    assert "203.0.113.50" in ev.checked[4]["detail"] and "1024-65535" in ev.checked[7]["detail"]
    assert "32768-60999" in ev.checked[8]["detail"]


def test_nat_subnet_acl_denies_the_port_out():
    ctx = _nat_world()
    ctx.subnets["subnet-pub"].nacl["Entries"] = [
        _rule(90, True, "deny", "0.0.0.0/0", (587, 587)),
        *ALLOW_ALL_ACL,
    ]
    ev = evaluate(ctx, PUBLIC, 587)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "acl-pub", "90")]
    assert ev.blockers[0].direction == "egress" and "nat-1's subnet subnet-pub" in ev.blockers[0].message
    assert evaluate(ctx, PUBLIC, 465).verdict == "allowed"


def test_nat_subnet_acl_denies_the_connection_in():
    ctx = _nat_world()
    ctx.subnets["subnet-pub"].nacl["Entries"] = [
        _rule(90, False, "deny", "10.0.1.0/24", (587, 587)),
        *ALLOW_ALL_ACL,
    ]
    (b,) = evaluate(ctx, PUBLIC, 587).blockers
    assert (b.id, b.direction, b.rule) == ("acl-pub", "ingress", "90") and "10.0.1.5" in b.message


def test_nat_subnet_acl_denies_the_replies_to_the_nat_ports():
    ctx = _nat_world()
    ctx.subnets["subnet-pub"].nacl["Entries"] = [
        _rule(100, True, "allow", "0.0.0.0/0", proto="-1"),
        _rule(100, False, "allow", "10.0.0.0/16", (587, 587)),
        _rule(110, False, "allow", "0.0.0.0/0", (32768, 65535)),  # right for Linux, not for NAT
    ]
    (b,) = evaluate(ctx, PUBLIC, 587).blockers
    assert (b.id, b.direction, b.rule, b.code) == ("acl-pub", "ingress", "*", "SUBNET_ACL_RESTRICTION")
    assert "1024-32767 (rule *)" in b.message and "some connection" in b.message
    ctx.subnets["subnet-pub"].nacl["Entries"][2]["PortRange"] = {"From": 1024, "To": 65535}
    assert evaluate(ctx, PUBLIC, 587).verdict == "allowed"


def test_nat_subnet_acl_denies_the_replies_to_us():
    ctx = _nat_world()
    ctx.subnets["subnet-pub"].nacl["Entries"] = [
        _rule(100, True, "allow", "0.0.0.0/0", (587, 587)),  # only the connection out
        _rule(100, False, "allow", "0.0.0.0/0", proto="-1"),
    ]
    (b,) = evaluate(ctx, PUBLIC, 587).blockers
    assert (b.id, b.direction, b.rule) == ("acl-pub", "egress", "*")
    assert "10.0.1.5" in b.message and "32768-60999" in b.message and "every connection" in b.message


def test_nat_in_our_own_subnet_meets_no_acl_on_the_way_in():
    ctx = _nat_world(SubnetId="subnet-1")
    ctx.subnets = {"subnet-1": Subnet("subnet-1", ctx.source.nacl, ctx.subnets["subnet-pub"].route_table)}
    ev = evaluate(ctx, PUBLIC, 587)
    assert ev.verdict == "allowed"
    nat_acl = [c["direction"] for c in ev.checked[5:] if c["component"] == "network-acl"]
    assert nat_acl == ["egress", "ingress"]  # only the internet side


def test_nat_subnet_without_a_way_to_the_internet():
    ctx = _nat_world()
    routes = ctx.subnets["subnet-pub"].route_table["Routes"]
    del routes[1]
    ev = evaluate(ctx, PUBLIC, 587)
    assert codes(ev) == [("route-table", "NO_ROUTE_TO_DESTINATION", "rtb-pub", None)]
    assert "nat-1" in ev.blockers[0].message and "internet gateway" in ev.blockers[0].message
    routes.append({"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "blackhole"})
    assert codes(evaluate(ctx, PUBLIC, 587)) == [("route-table", "ROUTE_BLACKHOLE", "rtb-pub", "0.0.0.0/0")]
    routes[-1] = {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-gone", "State": "active"}
    ctx.gateways["igw-gone"] = None  # no longer exists: AWS shows the route as a blackhole
    assert codes(evaluate(ctx, PUBLIC, 587)) == [("route-table", "ROUTE_BLACKHOLE", "rtb-pub", "0.0.0.0/0")]
    routes[-1] = {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"}
    ctx.gateways["igw-1"]["Attachments"] = [{"State": "detached"}]
    assert codes(evaluate(ctx, PUBLIC, 587)) == [("internet-gateway", "IGW_NOT_ATTACHED", "igw-1", None)]
    routes[-1] = {"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1", "State": "active"}
    (b,) = evaluate(ctx, PUBLIC, 587).blockers  # back to itself: a loop
    assert (b.component, b.code, b.id) == ("route-table", "NO_ROUTE_TO_DESTINATION", "rtb-pub")
    routes[-1] = {"DestinationCidrBlock": "0.0.0.0/0", "TransitGatewayId": "tgw-1", "State": "active"}
    ev = evaluate(ctx, PUBLIC, 587)
    assert ev.verdict == "unknown" and ev.checked[-2]["id"] == "tgw-1"


def test_nat_gateway_states():
    assert codes(evaluate(_nat_world(State="pending"), PUBLIC, 587)) == [
        ("nat-gateway", "BAD_STATE", "nat-1", None)
    ]
    for state in ("deleted", "deleting", "failed"):
        ev = evaluate(_nat_world(State=state), PUBLIC, 587)
        assert codes(ev) == [("route-table", "ROUTE_BLACKHOLE", "rtb-app", "0.0.0.0/0")]
        assert f"is {state}" in ev.blockers[0].message
    ctx = _nat_world()
    ctx.gateways["nat-1"] = None
    assert codes(evaluate(ctx, PUBLIC, 587)) == [("route-table", "ROUTE_BLACKHOLE", "rtb-app", "0.0.0.0/0")]


def test_private_nat_gateway_cannot_use_the_internet_gateway():
    ev = evaluate(
        _nat_world(ConnectivityType="private", NatGatewayAddresses=[{"PrivateIp": "10.0.0.9"}]), PUBLIC, 587
    )
    assert codes(ev) == [("internet-gateway", "IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS", "igw-1", None)]
    assert "nat-1 (a private NAT gateway) has no public IPv4" in ev.blockers[0].message


def test_nat_side_not_read_says_why():
    ctx = _nat_world()
    del ctx.gateways["nat-1"]
    ctx.unread["nat-1"] = "ec2:DescribeNatGateways"
    ev = evaluate(ctx, PUBLIC, 587)
    assert ev.verdict == "unknown" and ev.blockers == []
    assert ev.checked[-2]["detail"] == "could not check nat-gateway nat-1: needs ec2:DescribeNatGateways"
    assert missing_permissions(ctx, ["ec2:DescribeNatGateways"]) == [
        {
            "action": "ec2:DescribeNatGateways",
            "component": "nat-gateway",
            "message": "could not check nat-gateway: needs ec2:DescribeNatGateways",
        }
    ]
    ctx = _nat_world()
    sub = ctx.subnets["subnet-pub"]
    sub.nacl, sub.unread["network-acl"] = None, "ec2:DescribeNetworkAcls"
    sub.route_table, sub.unread["route-table"] = None, "DescribeRouteTables failed: InternalError"
    ev = evaluate(ctx, PUBLIC, 587)
    assert ev.verdict == "unknown"
    assert [c["detail"] for c in ev.checked if c["result"] == "unknown"] == [
        "could not check network-acl of nat-1's subnet subnet-pub: needs ec2:DescribeNetworkAcls",
        "could not check route-table of nat-1's subnet subnet-pub: DescribeRouteTables failed: InternalError",
    ]
    ctx.subnets = {}
    assert evaluate(ctx, PUBLIC, 587).verdict == "unknown"


def test_ipv6_through_the_egress_only_gateway():
    ctx = _nat_world()
    ev = evaluate(ctx, "2001:db8:9::1", 587)
    assert ev.verdict == "allowed", codes(ev)
    assert ("egress-only-internet-gateway", "eigw-1") in [(c["component"], c["id"]) for c in ev.checked]
    assert "nat-gateway" not in [c["component"] for c in ev.checked]
    ctx.gateways["eigw-1"]["Attachments"] = []
    assert codes(evaluate(ctx, "2001:db8:9::1", 587)) == [
        ("egress-only-internet-gateway", "BAD_STATE_ATTACHMENT", "eigw-1", None)
    ]
    ctx.gateways["eigw-1"] = None
    assert codes(evaluate(ctx, "2001:db8:9::1", 587)) == [
        ("route-table", "ROUTE_BLACKHOLE", "rtb-app", "::/0")
    ]
    ctx = _nat_world()
    ctx.source.ipv6s = []  # an interface without an IPv6 address sends no IPv6 at all
    assert codes(evaluate(ctx, "2001:db8:9::1", 587)) == [
        ("network-interface", "ENI_ADDRESS_RESTRICTION", "eni-1", None)
    ]


def test_ipv6_through_an_internet_gateway_needs_no_public_ipv4():
    ev = evaluate(_open_world(public_ip=None), "2001:db8:9::1", 587)
    assert ev.verdict == "allowed"
    (igw,) = [c for c in ev.checked if c["component"] == "internet-gateway"]
    assert igw["result"] == "allowed" and "no public IPv4 needed" in igw["detail"]


def test_ipv6_to_a_nat_gateway():
    """A NAT gateway carries IPv6 only to 64:ff9b::/96 (NAT64, to the embedded IPv4 address)."""
    ctx = _nat_world()
    ev = evaluate(ctx, "64:ff9b::c633:6407", 587)  # 198.51.100.7
    assert ev.verdict == "allowed", codes(ev)
    nat = next(c for c in ev.checked if c["component"] == "nat-gateway")
    assert "198.51.100.7 by NAT64" in nat["detail"]
    ctx.subnets["subnet-pub"].nacl["Entries"] = [
        _rule(90, True, "deny", "198.51.100.0/24", (587, 587)),
        *ALLOW_ALL_ACL,
    ]
    assert codes(evaluate(ctx, "64:ff9b::c633:6407", 587)) == [
        ("network-acl", "SUBNET_ACL_RESTRICTION", "acl-pub", "90")
    ]
    ctx.source.route_table["Routes"][2] = {"DestinationIpv6CidrBlock": "::/0", "NatGatewayId": "nat-1"}
    assert codes(evaluate(ctx, "2001:db8:9::1", 587)) == [
        ("nat-gateway", "NO_POSSIBLE_DESTINATION", "nat-1", None)
    ]


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
