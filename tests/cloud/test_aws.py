"""`mailpath cloud` against moto in server mode and a test IMDSv2: each way AWS configuration
can block mail, found and named; discovery through IMDS; least privilege."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mailpath.cloud.aws import ACTIONS, Identity, Reader, read_context
from mailpath.cloud.evaluate import evaluate

from tests.cloud.world import World
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
    assert check(w, "10.0.1.99", 25)[0].verdict == "allowed"
    assert check(w, "192.168.10.10", 25)[0].verdict == "allowed"


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
    assert evs[0]["verdict"] == "blocked" and evs[1]["verdict"] == "unknown"
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
