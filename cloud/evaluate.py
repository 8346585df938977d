"""Would the cloud let TCP from this host reach (address, port)? Pure rule evaluation.

Takes the EC2 API's own shapes (boto3 dicts) gathered in a :class:`Context`, and answers
which security group, network ACL, route or provider policy blocks the flow, as AWS
Reachability Analyzer would for this one question, plus what it cannot see: the provider's
port-25 policy. No boto3 here: everything is unit- and property-tested offline.

Semantics (EC2 API reference, VPC user guide):
- security groups: allow-only and stateful; the union of every group on the interface;
  protocol ``-1`` is everything; rules name IPv4/IPv6 CIDRs, prefix lists, or groups (whose
  members' private addresses match);
- network ACLs: stateless; rules in ascending number, first match wins, an implicit deny
  after the last (even when the API leaves the ``*`` rule out); IPv4 rules never match
  IPv6; so return traffic needs its own inbound rule for the client's ephemeral ports;
- route tables: longest prefix match; ``blackhole`` routes drop; leaving through an internet
  gateway over IPv4 needs a public address.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

Address = IPv4Address | IPv6Address
TCP = "6"
RFC1918 = [ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
PORT_25_POLICIES = {
    "aws": (
        "AWS blocks outbound TCP 25 from EC2 to public IPv4 addresses and to all IPv6 by default; "
        "the block is not visible through the EC2 API. Request its removal with the 'Request to "
        "remove email sending limitations' form (AWS Support), or send through 587/465, which are "
        "not restricted"
    ),
    "gcp": (
        "Google Cloud blocks outbound TCP 25 to addresses outside the VPC network; use 587 or 465 "
        "(not restricted) or a relay service"
    ),
    "azure": (
        "Azure blocks outbound TCP 25 for most subscription types (Enterprise Agreement ones are "
        "exempt); use authenticated submission on 587, which is not restricted"
    ),
}


@dataclass(frozen=True)
class Blocker:
    component: str  # security-group | network-acl | route-table | internet-gateway | provider-policy
    direction: str  # egress | ingress
    id: str | None
    rule: str | None
    code: str
    message: str
    certain: bool = True  # False for a provider policy the API cannot confirm

    def to_dict(self) -> dict:
        return {
            "component": self.component,
            "direction": self.direction,
            "id": self.id,
            "rule": self.rule,
            "code": self.code,
            "message": self.message,
            "certain": self.certain,
        }


@dataclass
class Interface:
    """What the evaluation needs of one network interface (ours, or the destination's)."""

    id: str | None
    subnet_id: str | None
    vpc_id: str | None
    private_ips: list[str] = field(default_factory=list)
    ipv6s: list[str] = field(default_factory=list)
    public_ip: str | None = None
    groups: list[dict] | None = None  # SecurityGroups as DescribeSecurityGroups returns them
    nacl: dict | None = None  # NetworkAcl of its subnet
    route_table: dict | None = None  # RouteTable of its subnet (explicit, else the main one)


@dataclass
class Context:
    provider: str | None  # aws, gcp, azure or None
    source: Interface
    destination: Interface | None = None  # when the destination is an interface we can read
    vpc_cidrs: list[str] = field(default_factory=list)
    prefix_lists: dict[str, list[str]] = field(default_factory=dict)  # pl-id -> CIDRs
    group_members: dict[str, list[str]] = field(default_factory=dict)  # sg-id -> private addresses
    gateways: dict[str, dict] = field(default_factory=dict)  # igw-/nat-/eigw- id -> API shape
    ephemeral: tuple[int, int] = (32768, 60999)  # this host's source ports (Linux default)
    unchecked: dict[str, str] = field(default_factory=dict)  # component -> missing permission


def policy_only(provider: str, ephemeral: tuple[int, int]) -> Context:
    """A context for a cloud whose configuration is not read: only its provider policy."""
    return Context(
        provider=provider,
        source=Interface(None, None, None),
        ephemeral=ephemeral,
        unchecked={"firewall": f"{provider} firewall rules are not read by mailpath"},
    )


# -- the pieces ----------------------------------------------------------------------------


def _proto_matches(rule_proto: str | int | None, proto: str = TCP) -> bool:
    p = str(rule_proto).lower()
    return p in ("-1", "all", proto, "tcp")


def _port_in(rule: dict, port: int, from_key: str = "FromPort", to_key: str = "ToPort") -> bool:
    lo, hi = rule.get(from_key), rule.get(to_key)
    if lo is None or hi is None or lo == -1:
        return True
    return lo <= port <= hi


def _in_cidr(addr: Address, cidr: str | None) -> bool:
    if not cidr:
        return False
    net = ip_network(cidr, strict=False)
    return net.version == addr.version and addr in net


def sg_rule_matches(perm: dict, peer: Address, port: int, ctx: Context) -> str | None:
    """If an IpPermissions entry lets TCP ``port`` to/from ``peer``, say which part of it."""
    if not _proto_matches(perm.get("IpProtocol")):
        return None
    if str(perm.get("IpProtocol")) != "-1" and not _port_in(perm, port):
        return None
    for r in perm.get("IpRanges", []):
        if _in_cidr(peer, r.get("CidrIp")):
            return r["CidrIp"]
    for r in perm.get("Ipv6Ranges", []):
        if _in_cidr(peer, r.get("CidrIpv6")):
            return r["CidrIpv6"]
    for r in perm.get("PrefixListIds", []):
        pl = r.get("PrefixListId")
        if any(_in_cidr(peer, c) for c in ctx.prefix_lists.get(pl, [])):
            return pl
    for r in perm.get("UserIdGroupPairs", []):
        gid = r.get("GroupId")
        if str(peer) in ctx.group_members.get(gid, []):
            return gid
    return None


def _describe(perm: dict, what: str) -> str:
    proto = str(perm.get("IpProtocol"))
    ports = (
        "all"
        if proto == "-1" or perm.get("FromPort") in (None, -1)
        else (
            str(perm["FromPort"])
            if perm["FromPort"] == perm["ToPort"]
            else f"{perm['FromPort']}-{perm['ToPort']}"
        )
    )
    return f"{'all traffic' if proto == '-1' else proto} {ports} {what}"


def security_groups(groups: list[dict], peer: Address, port: int, ctx: Context, egress: bool) -> str | None:
    """The first (group, rule) that allows the flow, as text; None when no group does."""
    key = "IpPermissionsEgress" if egress else "IpPermissions"
    for g in groups:
        for perm in g.get(key, []):
            hit = sg_rule_matches(perm, peer, port, ctx)
            if hit:
                return f"{g['GroupId']}: {_describe(perm, ('to ' if egress else 'from ') + hit)}"
    return None


def nacl_entries(nacl: dict, egress: bool, family: int) -> list[dict]:
    """The entries that apply, in evaluation order, ending with the implicit deny."""
    key = "Ipv6CidrBlock" if family == 6 else "CidrBlock"
    entries = sorted(
        (e for e in nacl.get("Entries", []) if bool(e.get("Egress")) == egress and e.get(key)),
        key=lambda e: e["RuleNumber"],
    )
    star = 32768 if family == 6 else 32767
    return [
        *entries,
        {
            "RuleNumber": star,
            "RuleAction": "deny",
            "Protocol": "-1",
            key: "::/0" if family == 6 else "0.0.0.0/0",
            "Egress": egress,
            "implicit": True,
        },
    ]


def nacl_decision(nacl: dict, egress: bool, peer: Address, port: int) -> dict:
    """The entry that decides TCP to/from ``peer`` with (destination) ``port``."""
    key = "Ipv6CidrBlock" if peer.version == 6 else "CidrBlock"
    for e in nacl_entries(nacl, egress, peer.version):
        if (
            _proto_matches(e.get("Protocol"))
            and _in_cidr(peer, e[key])
            and (str(e.get("Protocol")) == "-1" or _port_in(e.get("PortRange") or {}, port, "From", "To"))
        ):
            return e
    raise AssertionError("the implicit deny always matches")  # pragma: no cover


def nacl_denied_ranges(
    nacl: dict, egress: bool, peer: Address, lo: int, hi: int
) -> list[tuple[int, int, dict]]:
    """Which parts of the port range lo..hi the ACL denies, as (from, to, deciding entry):
    the range is cut at every rule boundary and each piece decided once."""
    cuts = {lo, hi + 1}
    for e in nacl_entries(nacl, egress, peer.version):
        pr = e.get("PortRange") or {}
        if pr.get("From") is not None:
            cuts.update(p for p in (pr["From"], pr["To"] + 1) if lo < p <= hi)
    bounds = sorted(cuts)
    denied: list[tuple[int, int, dict]] = []
    for a, b in itertools.pairwise(bounds):
        e = nacl_decision(nacl, egress, peer, a)
        if e["RuleAction"] == "deny":
            if denied and denied[-1][1] == a - 1 and denied[-1][2]["RuleNumber"] == e["RuleNumber"]:
                denied[-1] = (denied[-1][0], b - 1, e)
            else:
                denied.append((a, b - 1, e))
    return denied


def _rule_name(e: dict) -> str:
    return "*" if e.get("implicit") else str(e["RuleNumber"])


def longest_prefix_route(
    table: dict, dest: Address, prefix_lists: dict[str, list[str]]
) -> tuple[dict, str] | None:
    """The route for ``dest`` (longest prefix; prefix-list routes by their longest entry)."""
    best: tuple[int, dict, str] | None = None
    for r in table.get("Routes", []):
        cidrs = [r.get("DestinationCidrBlock"), r.get("DestinationIpv6CidrBlock")]
        if r.get("DestinationPrefixListId"):
            cidrs += prefix_lists.get(r["DestinationPrefixListId"], [])
        for c in cidrs:
            if _in_cidr(dest, c):
                plen = ip_network(c, strict=False).prefixlen
                if best is None or plen > best[0]:
                    best = (plen, r, c)
    return (best[1], best[2]) if best else None


def _target(route: dict) -> str:
    for key in (
        "GatewayId",
        "NatGatewayId",
        "EgressOnlyInternetGatewayId",
        "TransitGatewayId",
        "VpcPeeringConnectionId",
        "NetworkInterfaceId",
        "InstanceId",
        "LocalGatewayId",
        "CarrierGatewayId",
        "CoreNetworkArn",
    ):
        if route.get(key):
            return route[key]
    return "unknown"


def is_private_ipv4(addr: Address) -> bool:
    return addr.version == 4 and any(addr in n for n in RFC1918)


# -- the whole question --------------------------------------------------------------------


@dataclass
class Evaluation:
    destination: str
    port: int
    verdict: str  # allowed | blocked | unknown
    blockers: list[Blocker]
    checked: list[dict]

    def to_dict(self) -> dict:
        return {
            "destination": {"address": self.destination, "port": self.port},
            "verdict": self.verdict,
            "blockers": [b.to_dict() for b in self.blockers],
            "checked": self.checked,
        }


def evaluate(ctx: Context, destination: str, port: int) -> Evaluation:
    dest = ip_address(destination)
    src = ctx.source
    blockers: list[Blocker] = []
    checked: list[dict] = []

    def check(component: str, direction: str, id_: str | None, ok: bool | None, detail: str) -> None:
        checked.append(
            {
                "component": component,
                "direction": direction,
                "id": id_,
                "result": "unknown" if ok is None else ("allowed" if ok else "blocked"),
                "detail": detail,
            }
        )

    source_ip = _source_address(src, dest)
    in_vpc = any(_in_cidr(dest, c) for c in ctx.vpc_cidrs)

    # 1. security groups of our interface (stateful: the return is implied)
    if src.groups is None:
        check("security-group", "egress", None, None, _unread(ctx, "security-group"))
    else:
        ids = ",".join(g["GroupId"] for g in src.groups) or None
        allowed = security_groups(src.groups, dest, port, ctx, egress=True)
        check("security-group", "egress", ids, allowed is not None, allowed or "no egress rule matches")
        if allowed is None:
            empty = all(not g.get("IpPermissionsEgress") for g in src.groups)
            blockers.append(
                Blocker(
                    "security-group",
                    "egress",
                    ids,
                    None,
                    "SG_HAS_NO_RULES" if empty else "ENI_SG_RULES_MISMATCH",
                    f"no egress rule of {ids or 'the interface (no groups)'} allows TCP {port} to {dest}"
                    + (" (the groups have no egress rules at all)" if empty else ""),
                )
            )

    # 2. our subnet's network ACL, both ways (stateless); within one subnet no ACL applies
    d = ctx.destination
    same_subnet = d is not None and d.subnet_id is not None and d.subnet_id == src.subnet_id
    if same_subnet:
        check(
            "network-acl",
            "egress",
            None,
            True,
            f"{dest} is in this subnet ({src.subnet_id}): ACLs do not apply",
        )
    elif src.nacl is None:
        check("network-acl", "egress", None, None, _unread(ctx, "network-acl"))
    else:
        acl = src.nacl.get("NetworkAclId")
        e = nacl_decision(src.nacl, True, dest, port)
        ok = e["RuleAction"] == "allow"
        check(
            "network-acl", "egress", acl, ok, f"rule {_rule_name(e)} {e['RuleAction']}s TCP {port} to {dest}"
        )
        if not ok:
            blockers.append(
                Blocker(
                    "network-acl",
                    "egress",
                    acl,
                    _rule_name(e),
                    "SUBNET_ACL_RESTRICTION",
                    f"{acl} rule {_rule_name(e)} denies outbound TCP {port} to {dest}",
                )
            )
        lo, hi = ctx.ephemeral
        denied = nacl_denied_ranges(src.nacl, False, dest, lo, hi)
        check(
            "network-acl",
            "ingress",
            acl,
            not denied,
            f"return traffic from {dest} port {port} to ports {lo}-{hi}: "
            + (
                "allowed"
                if not denied
                else ", ".join(f"{a}-{b} denied by rule {_rule_name(x)}" for a, b, x in denied)
            ),
        )
        if denied:
            wide = nacl_denied_ranges(src.nacl, False, dest, 1024, 65535)
            parts = ", ".join(f"{a}-{b} (rule {_rule_name(x)})" for a, b, x in wide)
            every = "every" if denied == [(lo, hi, denied[0][2])] else "some"
            blockers.append(
                Blocker(
                    "network-acl",
                    "ingress",
                    acl,
                    _rule_name(denied[0][2]),
                    "SUBNET_ACL_RESTRICTION",
                    f"{acl} lets TCP {port} out but denies the replies from {dest} to ephemeral ports "
                    f"{parts}; this host uses {lo}-{hi}, so {every} connection fails (ACLs do not "
                    "track connections: an inbound rule must allow the replies)",
                )
            )

    # 3. our route table
    if src.route_table is None:
        check("route-table", "egress", None, None, _unread(ctx, "route-table"))
    else:
        rtb = src.route_table.get("RouteTableId")
        found = longest_prefix_route(src.route_table, dest, ctx.prefix_lists)
        if found is None:
            check("route-table", "egress", rtb, False, f"no route matches {dest}")
            blockers.append(
                Blocker(
                    "route-table",
                    "egress",
                    rtb,
                    None,
                    "NO_ROUTE_TO_DESTINATION",
                    f"{rtb} has no route to {dest}"
                    + ("" if dest.version == 4 else " (no IPv6 default route ::/0)"),
                )
            )
        else:
            route, cidr = found
            target = _target(route)
            state = route.get("State", "active")
            check("route-table", "egress", rtb, state != "blackhole", f"{cidr} via {target} ({state})")
            if state == "blackhole":
                blockers.append(
                    Blocker(
                        "route-table",
                        "egress",
                        rtb,
                        cidr,
                        "ROUTE_BLACKHOLE",
                        f"{rtb} sends {dest} by {cidr} to {target}, which no longer exists (blackhole)",
                    )
                )
            elif target.startswith("igw-"):
                gw = ctx.gateways.get(target)
                if gw is not None and not any(
                    a.get("State") in ("available", "attached") for a in gw.get("Attachments", [])
                ):
                    blockers.append(
                        Blocker(
                            "internet-gateway",
                            "egress",
                            target,
                            None,
                            "IGW_NOT_ATTACHED",
                            f"{target} is not attached to the VPC",
                        )
                    )
                if dest.version == 4 and not src.public_ip:
                    blockers.append(
                        Blocker(
                            "internet-gateway",
                            "egress",
                            target,
                            None,
                            "IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS",
                            f"{src.id or 'the interface'} has no public IPv4 address, so {target} cannot "
                            f"carry its traffic to {dest} (add an Elastic IP, or route via a NAT gateway)",
                        )
                    )
                check(
                    "internet-gateway",
                    "egress",
                    target,
                    dest.version == 6 or bool(src.public_ip),
                    f"public IPv4: {src.public_ip or 'none'}",
                )

    # 4. the destination's own interface, when it is ours to read
    if d is not None and source_ip is not None:
        if d.groups is not None:
            ids = ",".join(g["GroupId"] for g in d.groups)
            allowed = security_groups(d.groups, source_ip, port, ctx, egress=False)
            check("security-group", "ingress", ids, allowed is not None, allowed or "no ingress rule matches")
            if allowed is None:
                blockers.append(
                    Blocker(
                        "security-group",
                        "ingress",
                        ids,
                        None,
                        "ENI_SG_RULES_MISMATCH",
                        f"no ingress rule of {ids} (on {d.id}) allows TCP {port} from {source_ip}",
                    )
                )
        if d.nacl is not None and not same_subnet:
            acl = d.nacl["NetworkAclId"]
            e = nacl_decision(d.nacl, False, source_ip, port)
            ok = e["RuleAction"] == "allow"
            check(
                "network-acl",
                "ingress",
                acl,
                ok,
                f"rule {_rule_name(e)} {e['RuleAction']}s TCP {port} from {source_ip} into {d.subnet_id}",
            )
            if not ok:
                blockers.append(
                    Blocker(
                        "network-acl",
                        "ingress",
                        acl,
                        _rule_name(e),
                        "SUBNET_ACL_RESTRICTION",
                        f"{acl} rule {_rule_name(e)} denies TCP {port} from {source_ip} into the "
                        f"destination's subnet {d.subnet_id}",
                    )
                )
            lo, hi = ctx.ephemeral
            denied = nacl_denied_ranges(d.nacl, True, source_ip, lo, hi)
            if denied:
                blockers.append(
                    Blocker(
                        "network-acl",
                        "egress",
                        acl,
                        _rule_name(denied[0][2]),
                        "SUBNET_ACL_RESTRICTION",
                        f"{acl} (destination subnet) denies the replies to {source_ip} ports "
                        + ", ".join(f"{a}-{b}" for a, b, _ in denied),
                    )
                )

    # 5. the provider's own policy, invisible to the API
    policy = PORT_25_POLICIES.get(ctx.provider or "")
    leaves = not in_vpc and not (dest.version == 4 and is_private_ipv4(dest))
    if port == 25 and policy and leaves:
        blockers.append(
            Blocker(
                "provider-policy",
                "egress",
                ctx.provider,
                None,
                "PROVIDER_PORT_25_BLOCK",
                f"likely cause, to verify: {policy}",
                certain=False,
            )
        )
        check("provider-policy", "egress", ctx.provider, False, "port 25 to an address outside the VPC")
    elif policy:
        check(
            "provider-policy",
            "egress",
            ctx.provider,
            True,
            f"port {port} "
            + ("is not restricted" if port != 25 else "to a private/VPC address is not blocked"),
        )

    if blockers:
        verdict = "blocked"
    elif ctx.unchecked or any(c["result"] == "unknown" for c in checked):
        verdict = "unknown"
    else:
        verdict = "allowed"
    return Evaluation(str(dest), port, verdict, blockers, checked)


def _unread(ctx: Context, component: str) -> str:
    why = ctx.unchecked.get(component)
    if why and why.startswith("ec2:"):
        return f"could not check {component}: needs {why}"
    return why or f"could not check {component}"


def missing_permissions(ctx: Context, actions: list[str]) -> list[dict]:
    """Each missing permission with what it kept from being checked."""
    out = [
        {"action": a, "component": c, "message": f"could not check {c}: needs {a}"}
        for c, a in ctx.unchecked.items()
        if a.startswith("ec2:")
    ]
    seen = {m["action"] for m in out}
    out += [{"action": a, "component": None, "message": f"needs {a}"} for a in actions if a not in seen]
    return out


def _source_address(src: Interface, dest: Address) -> Address | None:
    pool = src.ipv6s if dest.version == 6 else src.private_ips
    return ipaddress.ip_address(pool[0]) if pool else None
