"""`mailpath cloud` against moto in server mode and a test IMDSv2: each way AWS configuration
can block mail, found and named; discovery through IMDS; least privilege."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mailpath.cloud.aws import ACTIONS, Identity, Reader, read_context
from mailpath.cloud.evaluate import evaluate

from lab.world import World
from tests.conftest import MAILPATH

PUBLIC = "198.51.100.7"
POLICY = Path(__file__).resolve().parents[2] / "deploy" / "iam-policy.json"


ALL = [
    (100, True, "allow", "-1", "0.0.0.0/0", None),
    (100, False, "allow", "-1", "0.0.0.0/0", None),
    (101, True, "allow", "-1", "::/0", None),
    (101, False, "allow", "-1", "::/0", None),
]


def check(world: World, dest: str, port: int, reader: Reader | None = None):
    who = Identity(instance_id=world.instance, region="eu-west-1")
    ctx, dests, reader = read_context(who, [dest], (32768, 60999), reader)
    ctx.destination = dests[dest]
    return evaluate(ctx, dest, port), reader


def codes(ev) -> list[tuple[str, str, str | None]]:
    return [(b.component, b.code, b.rule) for b in ev.blockers]


def test_open_world_allows_submission(aws):
    w = World.build(aws)
    ev, _ = check(w, PUBLIC, 587)
    assert ev.verdict == "allowed" and ev.blockers == []


def test_security_group_without_the_port(aws):
    w = World.build(
        aws,
        egress=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("security-group", "ENI_SG_RULES_MISMATCH", None)]
    assert ev.blockers[0].id == w.sg and ev.blockers[0].direction == "egress"


def test_security_group_with_no_rules(aws):
    w = World.build(aws, egress=[])
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("security-group", "SG_HAS_NO_RULES", None)]


def test_acl_egress_deny_and_rule_order(aws):
    w = World.build(aws)
    w.custom_acl([(90, True, "deny", "6", "0.0.0.0/0", (587, 587)), *ALL])
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "90")]
    assert ev.blockers[0].direction == "egress"
    ev, _ = check(w, PUBLIC, 465)
    assert ev.verdict == "allowed"


def test_lower_rule_number_wins(aws):
    w = World.build(aws)
    w.custom_acl(
        [
            (50, True, "allow", "6", "0.0.0.0/0", (587, 587)),
            (60, True, "deny", "-1", "0.0.0.0/0", None),
            (100, False, "allow", "-1", "0.0.0.0/0", None),
        ]
    )
    assert check(w, PUBLIC, 587)[0].verdict == "allowed"
    assert codes(check(w, PUBLIC, 465)[0]) == [("network-acl", "SUBNET_ACL_RESTRICTION", "60")]


def test_custom_acl_without_rules_denies_by_default(aws):
    w = World.build(aws)
    w.custom_acl([])  # moto leaves out the '*' entries; AWS's implicit deny still applies
    ev, _ = check(w, PUBLIC, 587)
    assert ("network-acl", "SUBNET_ACL_RESTRICTION", "*") in codes(ev)


def test_acl_that_blocks_only_the_replies(aws):
    w = World.build(aws)
    w.custom_acl(
        [
            (100, True, "allow", "-1", "0.0.0.0/0", None),
            (100, False, "allow", "6", "0.0.0.0/0", (1024, 32767)),
        ]
    )
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "*")]
    b = ev.blockers[0]
    assert b.direction == "ingress" and "32768-65535" in b.message and "every" in b.message


def test_prefix_list_rule(aws):
    pl = aws.create_managed_prefix_list(
        PrefixListName="relays", MaxEntries=5, AddressFamily="IPv4", Entries=[{"Cidr": "198.51.100.0/24"}]
    )["PrefixList"]["PrefixListId"]
    w = World.build(
        aws,
        egress=[
            {"IpProtocol": "tcp", "FromPort": 587, "ToPort": 587, "PrefixListIds": [{"PrefixListId": pl}]}
        ],
    )
    assert check(w, PUBLIC, 587)[0].verdict == "allowed"
    assert codes(check(w, "203.0.113.9", 587)[0]) == [("security-group", "ENI_SG_RULES_MISMATCH", None)]


def test_blackhole_route(aws):
    w = World.build(aws)
    igw2 = aws.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    aws.create_route(RouteTableId=w.rtb, DestinationCidrBlock="198.51.100.0/24", GatewayId=igw2)
    aws.delete_internet_gateway(InternetGatewayId=igw2)  # the route now leads nowhere
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("route-table", "ROUTE_BLACKHOLE", "198.51.100.0/24")]


def test_no_default_route(aws):
    w = World.build(aws)
    aws.delete_route(RouteTableId=w.rtb, DestinationCidrBlock="0.0.0.0/0")
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("route-table", "NO_ROUTE_TO_DESTINATION", None)]


def test_missing_public_ip(aws):
    w = World.build(aws, public_ip=False)
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("internet-gateway", "IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS", None)]


def test_ipv6(aws):
    w = World.build(
        aws,
        egress=[{"IpProtocol": "tcp", "FromPort": 587, "ToPort": 587, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        public_ip=False,
    )
    w.custom_acl(ALL)  # AWS's default ACL has IPv6 rules in an IPv6 VPC; moto's does not
    dest = "2001:db8:5::25"
    assert codes(check(w, dest, 587)[0]) == [("security-group", "ENI_SG_RULES_MISMATCH", None)]
    aws.authorize_security_group_egress(
        GroupId=w.sg,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 587, "ToPort": 587, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
        ],
    )
    assert check(w, dest, 587)[0].verdict == "allowed"  # IPv6 needs no public IPv4
    aws.delete_route(RouteTableId=w.rtb, DestinationIpv6CidrBlock="::/0")
    assert codes(check(w, dest, 587)[0]) == [("route-table", "NO_ROUTE_TO_DESTINATION", None)]
    w.custom_acl(ALL[:2])  # IPv4 rules only: IPv6 falls to the implicit deny
    aws.create_route(RouteTableId=w.rtb, DestinationIpv6CidrBlock="::/0", GatewayId=w.igw)
    assert ("network-acl", "SUBNET_ACL_RESTRICTION", "*") in codes(check(w, dest, 587)[0])


def test_destination_in_the_same_vpc(aws):
    w = World.build(aws)
    other = aws.create_subnet(VpcId=w.vpc, CidrBlock="10.0.2.0/24")["Subnet"]["SubnetId"]
    dsg = aws.create_security_group(GroupName="relay", Description="relay", VpcId=w.vpc)["GroupId"]
    aws.authorize_security_group_ingress(
        GroupId=dsg,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 25, "ToPort": 25, "UserIdGroupPairs": [{"GroupId": w.sg}]}
        ],
    )
    relay = aws.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=other, SecurityGroupIds=[dsg]
    )["Instances"][0]["PrivateIpAddress"]
    ev, _ = check(w, relay, 25)
    assert ev.verdict == "allowed", codes(ev)  # group reference: our instance is a member of w.sg
    ev, _ = check(w, relay, 587)
    assert codes(ev) == [("security-group", "ENI_SG_RULES_MISMATCH", None)]
    assert ev.blockers[0].direction == "ingress" and dsg in ev.blockers[0].id
    # the relay's subnet ACL refuses 25 from our subnet
    acl = aws.create_network_acl(VpcId=w.vpc)["NetworkAcl"]["NetworkAclId"]
    aws.create_network_acl_entry(
        NetworkAclId=acl,
        RuleNumber=10,
        Protocol="6",
        RuleAction="deny",
        Egress=False,
        CidrBlock="10.0.1.0/24",
        PortRange={"From": 25, "To": 25},
    )
    aws.create_network_acl_entry(
        NetworkAclId=acl,
        RuleNumber=100,
        Protocol="-1",
        RuleAction="allow",
        Egress=False,
        CidrBlock="0.0.0.0/0",
    )
    aws.create_network_acl_entry(
        NetworkAclId=acl,
        RuleNumber=100,
        Protocol="-1",
        RuleAction="allow",
        Egress=True,
        CidrBlock="0.0.0.0/0",
    )
    assoc = aws.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [other]}])
    current = next(
        a["NetworkAclAssociationId"]
        for a in assoc["NetworkAcls"][0]["Associations"]
        if a["SubnetId"] == other
    )
    aws.replace_network_acl_association(AssociationId=current, NetworkAclId=acl)
    ev, _ = check(w, relay, 25)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "10")]
    assert ev.blockers[0].direction == "ingress" and ev.blockers[0].id == acl


def test_access_denied_on_one_call(aws, denier):
    w = World.build(aws)
    denier.deny = {"DescribeNetworkAcls"}
    ev, reader = check(w, PUBLIC, 587)
    assert ev.verdict == "unknown" and ev.blockers == []
    assert reader.missing == ["ec2:DescribeNetworkAcls"]
    results = {(c["component"], c["direction"]): c["result"] for c in ev.checked}
    assert results[("network-acl", "egress")] == "unknown"
    assert (
        results[("security-group", "egress")] == "allowed" and results[("route-table", "egress")] == "allowed"
    )


def test_port_25_public_versus_private(aws):
    w = World.build(aws)
    ev, _ = check(w, PUBLIC, 25)
    assert codes(ev) == [("provider-policy", "PROVIDER_PORT_25_BLOCK", None)] and not ev.blockers[0].certain
    assert ev.verdict == "likely-blocked"  # a policy the API cannot confirm: never plain "blocked"
    assert check(w, "10.0.1.99", 25)[0].verdict == "allowed"
    # a private address outside the VPC meets no provider policy; through the internet gateway
    # (0.0.0.0/0 here) it goes nowhere, as Reachability Analyzer says
    ev, _ = check(w, "192.168.10.10", 25)
    assert codes(ev) == [("internet-gateway", "IGW_DESTINATION_ADDRESS_NOT_IN_RFC1918_EGRESS", None)]
    policy = next(c for c in ev.checked if c["component"] == "provider-policy")
    assert policy["result"] == "allowed" and "private" in policy["detail"]


# -- the path through a NAT gateway, and IPv6 through an egress-only internet gateway ---------


def _nat_public_ip(w: World) -> str:
    (nat,) = w.ec2.describe_nat_gateways(NatGatewayIds=[w.nat])["NatGateways"]
    return nat["NatGatewayAddresses"][0]["PublicIp"]


def test_nat_path_allowed(aws):
    """A private subnet (no public address) out through a NAT gateway in a public subnet."""
    w = World.build(aws, via="nat", public_ip=False)
    ev, _ = check(w, PUBLIC, 587)
    assert ev.verdict == "allowed", (codes(ev), ev.checked)
    results = {(c["component"], c["id"]): c for c in ev.checked}
    assert results[("route-table", w.rtb)]["detail"].startswith(f"0.0.0.0/0 via {w.nat}")
    assert _nat_public_ip(w) in results[("nat-gateway", w.nat)]["detail"]
    assert results[("route-table", w.nat_rtb)]["detail"].startswith(f"0.0.0.0/0 via {w.igw}")
    assert results[("internet-gateway", w.igw)]["result"] == "allowed"
    nat_acl = aws.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": [w.nat_subnet]}]
    )["NetworkAcls"][0]["NetworkAclId"]
    acl_checks = [c for c in ev.checked if c["component"] == "network-acl" and c["id"] == nat_acl]
    assert len(acl_checks) >= 4 and all(c["result"] == "allowed" for c in acl_checks)  # both ways, twice
    assert "1024-65535" in " ".join(c["detail"] for c in acl_checks)  # the NAT gateway's ports
    ev, _ = check(w, PUBLIC, 25)  # the same path; port 25 meets AWS's policy, a likely cause only
    assert ev.verdict == "likely-blocked" and codes(ev) == [
        ("provider-policy", "PROVIDER_PORT_25_BLOCK", None)
    ]


def test_nat_subnet_acl_denies_587_egress(aws):
    w = World.build(aws, via="nat", public_ip=False)
    acl = w.custom_acl([(90, True, "deny", "6", "0.0.0.0/0", (587, 587)), *ALL], subnet=w.nat_subnet)
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "90")]
    b = ev.blockers[0]
    assert b.id == acl and b.direction == "egress" and w.nat in b.message and b.certain
    assert check(w, PUBLIC, 465)[0].verdict == "allowed"


def test_nat_subnet_acl_denies_the_replies(aws):
    """The NAT gateway's replies arrive at its ports 1024-65535, not at this host's range."""
    w = World.build(aws, via="nat", public_ip=False)
    into_nat = (100, False, "allow", "6", "10.0.1.0/24", (587, 587))  # from the app subnet
    acl = w.custom_acl(
        [
            (100, True, "allow", "-1", "0.0.0.0/0", None),
            into_nat,
            (110, False, "allow", "6", "0.0.0.0/0", (32768, 65535)),  # a Linux host's range only
        ],
        subnet=w.nat_subnet,
    )
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("network-acl", "SUBNET_ACL_RESTRICTION", "*")]
    b = ev.blockers[0]
    assert b.id == acl and b.direction == "ingress"
    assert "1024-32767" in b.message and "some connection" in b.message and w.nat in b.message
    acl = w.custom_acl([(100, True, "allow", "-1", "0.0.0.0/0", None), into_nat], subnet=w.nat_subnet)
    (b,) = check(w, PUBLIC, 587)[0].blockers
    assert (b.id, b.direction, b.rule) == (acl, "ingress", "*") and "every connection" in b.message
    # and the other way: the connection from this host into the NAT gateway's subnet
    w.custom_acl([(100, True, "allow", "-1", "0.0.0.0/0", None)], subnet=w.nat_subnet)
    blockers = check(w, PUBLIC, 587)[0].blockers
    assert [(b.direction, b.code) for b in blockers] == [("ingress", "SUBNET_ACL_RESTRICTION")] * 2
    assert w.private_ip in blockers[0].message and PUBLIC in blockers[1].message


def test_nat_subnet_without_a_way_to_the_internet(aws):
    w = World.build(aws, via="nat", public_ip=False)
    aws.delete_route(RouteTableId=w.nat_rtb, DestinationCidrBlock="0.0.0.0/0")
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("route-table", "NO_ROUTE_TO_DESTINATION", None)]
    assert ev.blockers[0].id == w.nat_rtb and w.nat in ev.blockers[0].message
    # a route to an internet gateway that no longer exists
    igw2 = aws.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    aws.create_route(RouteTableId=w.nat_rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw2)
    aws.delete_internet_gateway(InternetGatewayId=igw2)
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("route-table", "ROUTE_BLACKHOLE", "0.0.0.0/0")] and ev.blockers[0].id == w.nat_rtb
    # a route to an internet gateway that is not attached to the VPC
    igw3 = aws.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    aws.replace_route(RouteTableId=w.nat_rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw3)
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("internet-gateway", "IGW_NOT_ATTACHED", None)] and ev.blockers[0].id == igw3


def test_nat_gateway_deleted_or_unreadable(aws, denier):
    w = World.build(aws, via="nat", public_ip=False)
    denier.deny = {"DescribeNatGateways"}
    ev, reader = check(w, PUBLIC, 587)
    assert ev.verdict == "unknown" and ev.blockers == []
    (nat,) = [c for c in ev.checked if c["component"] == "nat-gateway"]
    assert nat["result"] == "unknown" and nat["detail"].endswith("needs ec2:DescribeNatGateways")
    assert reader.missing == ["ec2:DescribeNatGateways"]
    denier.deny = set()
    aws.delete_nat_gateway(NatGatewayId=w.nat)
    ev, _ = check(w, PUBLIC, 587)
    assert codes(ev) == [("route-table", "ROUTE_BLACKHOLE", "0.0.0.0/0")] and ev.blockers[0].id == w.rtb


def test_ipv6_through_an_egress_only_internet_gateway(aws):
    w = World.build(aws, via="nat", public_ip=False)
    w.custom_acl(ALL)  # AWS's default ACL has IPv6 rules in an IPv6 VPC; moto's does not
    dest = "2001:db8:5::25"
    ev, _ = check(w, dest, 587)
    assert ev.verdict == "allowed", (codes(ev), ev.checked)
    results = {(c["component"], c["id"]): c["result"] for c in ev.checked}
    assert results[("egress-only-internet-gateway", w.eigw)] == "allowed"
    assert ("nat-gateway", w.nat) not in results  # IPv6 does not go through the NAT gateway
    assert check(w, dest, 25)[0].verdict == "likely-blocked"  # AWS blocks 25 to IPv6 too
    aws.delete_egress_only_internet_gateway(EgressOnlyInternetGatewayId=w.eigw)
    ev, _ = check(w, dest, 587)
    assert codes(ev) == [("route-table", "ROUTE_BLACKHOLE", "::/0")]


def test_each_call_is_made_once(aws):
    """Two destinations in one run need the same reads: each (operation, parameters) reaches
    the API once, counted below boto3."""
    w = World.build(
        aws,
        egress=[
            {"IpProtocol": "tcp", "FromPort": 25, "ToPort": 25, "UserIdGroupPairs": [{"GroupId": w_sg}]}
            for w_sg in ()
        ]
        or None,
    )
    sent: list[str] = []
    reader = Reader("eu-west-1")
    reader.client.meta.events.register(
        "before-parameter-build.ec2.*",
        lambda model, params, **_: sent.append(json.dumps([model.name, params], sort_keys=True)),
    )
    who = Identity(instance_id=w.instance, region="eu-west-1")
    read_context(who, [PUBLIC, w.private_ip, PUBLIC], (32768, 60999), reader)
    read_context(who, [PUBLIC], (32768, 60999), reader)
    assert sent and len(sent) == len(set(sent))


def test_only_the_policy_actions_are_called(aws):
    """Every scenario above, with each API call recorded below boto3: all are in the policy."""
    policy = json.loads(POLICY.read_text())
    allowed = {a for st in policy["Statement"] for a in st["Action"]}
    assert all(st["Effect"] == "Allow" and st["Resource"] == "*" for st in policy["Statement"])
    assert all(a.split(":")[1].startswith(("Describe", "Get")) for a in allowed)
    seen: set[str] = set()
    reader = Reader("eu-west-1")
    reader.client.meta.events.register("before-call.ec2.*", lambda model, **_: seen.add(f"ec2:{model.name}"))
    w = World.build(aws)
    peers = aws.create_security_group(GroupName="peers", Description="peers", VpcId=w.vpc)["GroupId"]
    aws.authorize_security_group_egress(
        GroupId=w.sg,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 25, "ToPort": 25, "UserIdGroupPairs": [{"GroupId": peers}]}
        ],
    )
    pl = aws.create_managed_prefix_list(
        PrefixListName="p", MaxEntries=5, AddressFamily="IPv4", Entries=[{"Cidr": "198.51.100.0/24"}]
    )["PrefixList"]["PrefixListId"]
    aws.create_route(RouteTableId=w.rtb, DestinationPrefixListId=pl, GatewayId=w.igw)
    check(w, PUBLIC, 25, reader)
    check(w, w.private_ip, 25, reader)
    n = World.build(aws, via="nat", public_ip=False)
    check(n, PUBLIC, 587, reader)
    check(n, "2001:db8:5::25", 587, reader)
    assert {"ec2:DescribeNatGateways", "ec2:DescribeEgressOnlyInternetGateways"} <= seen
    assert seen, "no call was recorded"
    assert seen <= allowed, seen - allowed
    assert set(ACTIONS.values()) <= allowed


# -- the command, with discovery through IMDSv2 ---------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAILPATH, "cloud", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


def test_cli_discovers_the_instance_through_imdsv2(aws, imds, monkeypatch):
    w = World.build(
        aws,
        egress=[{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    imds.paths = w.imds_paths()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url + "/")
    r = run_cli("--dest", PUBLIC, "--port", "587", "--json")
    assert r.returncode == 1, r.stderr
    (d,) = json.loads(r.stdout)["evaluations"]
    assert d["provider"] == "aws" and d["instance"]["instance_id"] == w.instance
    assert d["instance"]["source"] == "imds" and d["destination"] == {"address": PUBLIC, "port": 587}
    assert d["verdict"] == "blocked" and d["blockers"][0]["component"] == "security-group"
    assert set(d) >= {
        "provider",
        "instance",
        "destination",
        "verdict",
        "blockers",
        "checked",
        "missing_permissions",
    }
    assert set(d["blockers"][0]) >= {"component", "direction", "id", "rule", "code", "message"}
    assert imds.log[0][:2] == ("PUT", "/latest/api/token")  # token first
    assert all(good for method, _, good in imds.log if method == "GET")


def test_cli_several_ports_and_missing_permission(aws, denier):
    w = World.build(aws)
    denier.deny = {"DescribeSecurityGroups"}
    r = run_cli(
        "--dest", PUBLIC, "--port", "25,587", "--instance-id", w.instance, "--region", "eu-west-1", "--json"
    )
    evs = json.loads(r.stdout)["evaluations"]
    assert [e["destination"]["port"] for e in evs] == [25, 587]
    assert evs[0]["verdict"] == "likely-blocked" and evs[1]["verdict"] == "unknown"
    assert evs[1]["missing_permissions"] == ["ec2:DescribeSecurityGroups"]
    assert evs[1]["unchecked"][0]["message"] == (
        "could not check security-group: needs ec2:DescribeSecurityGroups"
    )


def test_cli_off_cloud_and_bad_input(aws):
    r = run_cli("--dest", PUBLIC)
    assert r.returncode == 3 and "--instance-id" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run_cli("--dest", PUBLIC, "--port", "99999", "--instance-id", "i-1")
    assert r.returncode == 2 and "99999" in r.stderr
    r = run_cli("--dest", PUBLIC, "--instance-id", "i-0123456789abcdef0", "--region", "eu-west-1")
    assert r.returncode == 3 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_cli_provider_policy_without_aws(aws):
    r = run_cli("--dest", PUBLIC, "--port", "25", "--provider", "gcp", "--json")
    (d,) = json.loads(r.stdout)["evaluations"]
    assert d["provider"] == "gcp" and d["blockers"][0]["code"] == "PROVIDER_PORT_25_BLOCK"
    assert d["verdict"] == "likely-blocked" and r.returncode == 1
    r = run_cli("--dest", PUBLIC, "--port", "25", "--provider", "gcp")
    assert r.returncode == 1 and "likely blocked: provider policy" in " ".join(r.stdout.split())


def test_cli_destinations_no_provider_policy_meets(aws):
    """Loopback, unspecified and link-local never reach the cloud's network; private addresses
    (RFC 1918, ULA) meet no provider policy; nothing is ever called "blocked" by a policy."""
    for dest in ("127.0.0.1", "::1", "0.0.0.0", "169.254.10.1", "fe80::1"):
        r = run_cli("--dest", dest, "--port", "25", "--provider", "gcp", "--json")
        (d,) = json.loads(r.stdout)["evaluations"]
        assert (d["verdict"], d["blockers"], r.returncode) == ("allowed", [], 0), (dest, d)
    for dest in ("10.1.2.3", "172.16.0.9", "192.168.1.1", "fd12:3456::25"):
        for provider in ("gcp", "azure"):
            r = run_cli("--dest", dest, "--port", "25", "--provider", provider, "--json")
            (d,) = json.loads(r.stdout)["evaluations"]
            assert d["blockers"] == [] and d["verdict"] == "unknown", (dest, d)
            unread = [c for c in d["checked"] if c["result"] == "unknown"]
            assert unread and all(c["detail"].startswith("could not check firewall: ") for c in unread)
