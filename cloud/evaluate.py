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


# -- one check per component, in the order the flow meets them -----------------------------


@dataclass
class _Findings:
    """What the checks of :func:`evaluate` found: each component looked at, and what blocks."""

    checked: list[dict] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)

    def check(self, component: str, direction: str, id_: str | None, ok: bool | None, detail: str) -> None:
        """Record one component looked at; ``ok`` is None when it could not be read."""
        self.checked.append(
            {
                "component": component,
                "direction": direction,
                "id": id_,
                "result": "unknown" if ok is None else ("allowed" if ok else "blocked"),
                "detail": detail,
            }
        )


def _same_subnet(ctx: Context) -> bool:
    """Whether the destination is an interface in our own subnet, where no network ACL applies."""
    d = ctx.destination
    return d is not None and d.subnet_id is not None and d.subnet_id == ctx.source.subnet_id


def _check_security_groups(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """Our interface's security groups let the connection out (stateful: the replies follow)."""
    src = ctx.source
    if src.groups is None:
        found.check("security-group", "egress", None, None, _unread(ctx, "security-group"))
        return
    ids = ",".join(g["GroupId"] for g in src.groups) or None
    allowed = security_groups(src.groups, dest, port, ctx, egress=True)
    found.check("security-group", "egress", ids, allowed is not None, allowed or "no egress rule matches")
    if allowed is None:
        empty = all(not g.get("IpPermissionsEgress") for g in src.groups)
        found.blockers.append(
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


def _check_acl_egress(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """Our subnet's network ACL lets the connection out (within one subnet no ACL applies)."""
    src = ctx.source
    if _same_subnet(ctx):
        found.check(
            "network-acl",
            "egress",
            None,
            True,
            f"{dest} is in this subnet ({src.subnet_id}): ACLs do not apply",
        )
        return
    if src.nacl is None:
        found.check("network-acl", "egress", None, None, _unread(ctx, "network-acl"))
        return
    acl = src.nacl.get("NetworkAclId")
    e = nacl_decision(src.nacl, True, dest, port)
    ok = e["RuleAction"] == "allow"
    found.check(
        "network-acl", "egress", acl, ok, f"rule {_rule_name(e)} {e['RuleAction']}s TCP {port} to {dest}"
    )
    if not ok:
        found.blockers.append(
            Blocker(
                "network-acl",
                "egress",
                acl,
                _rule_name(e),
                "SUBNET_ACL_RESTRICTION",
                f"{acl} rule {_rule_name(e)} denies outbound TCP {port} to {dest}",
            )
        )


def _check_acl_return(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """Our subnet's network ACL lets the replies in to every ephemeral port this host uses (ACLs
    are stateless); nothing to add where :func:`_check_acl_egress` found no ACL to apply or read."""
    src = ctx.source
    if _same_subnet(ctx) or src.nacl is None:
        return
    acl = src.nacl.get("NetworkAclId")
    lo, hi = ctx.ephemeral
    denied = nacl_denied_ranges(src.nacl, False, dest, lo, hi)
    found.check(
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
        found.blockers.append(
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


def _check_route_table(ctx: Context, dest: Address, found: _Findings) -> str | None:
    """Our route table has a live route to ``dest``; returns that route's target (None when the
    table is unread, has no route, or the route is a blackhole)."""
    src = ctx.source
    if src.route_table is None:
        found.check("route-table", "egress", None, None, _unread(ctx, "route-table"))
        return None
    rtb = src.route_table.get("RouteTableId")
    hit = longest_prefix_route(src.route_table, dest, ctx.prefix_lists)
    if hit is None:
        found.check("route-table", "egress", rtb, False, f"no route matches {dest}")
        found.blockers.append(
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
        return None
    route, cidr = hit
    target = _target(route)
    state = route.get("State", "active")
    found.check("route-table", "egress", rtb, state != "blackhole", f"{cidr} via {target} ({state})")
    if state == "blackhole":
        found.blockers.append(
            Blocker(
                "route-table",
                "egress",
                rtb,
                cidr,
                "ROUTE_BLACKHOLE",
                f"{rtb} sends {dest} by {cidr} to {target}, which no longer exists (blackhole)",
            )
        )
        return None
    return target


def _check_internet_gateway(ctx: Context, dest: Address, igw: str, found: _Findings) -> None:
    """The internet gateway our route leads to is attached, and, over IPv4, our interface has a
    public address to leave through it."""
    src = ctx.source
    gw = ctx.gateways.get(igw)
    if gw is not None and not any(
        a.get("State") in ("available", "attached") for a in gw.get("Attachments", [])
    ):
        found.blockers.append(
            Blocker(
                "internet-gateway",
                "egress",
                igw,
                None,
                "IGW_NOT_ATTACHED",
                f"{igw} is not attached to the VPC",
            )
        )
    if dest.version == 4 and not src.public_ip:
        found.blockers.append(
            Blocker(
                "internet-gateway",
                "egress",
                igw,
                None,
                "IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS",
                f"{src.id or 'the interface'} has no public IPv4 address, so {igw} cannot "
                f"carry its traffic to {dest} (add an Elastic IP, or route via a NAT gateway)",
            )
        )
    found.check(
        "internet-gateway",
        "egress",
        igw,
        dest.version == 6 or bool(src.public_ip),
        f"public IPv4: {src.public_ip or 'none'}",
    )


def _check_destination_groups(
    d: Interface, source_ip: Address, port: int, ctx: Context, found: _Findings
) -> None:
    """The destination interface's own security groups let the connection in."""
    if d.groups is None:
        return
    ids = ",".join(g["GroupId"] for g in d.groups)
    allowed = security_groups(d.groups, source_ip, port, ctx, egress=False)
    found.check("security-group", "ingress", ids, allowed is not None, allowed or "no ingress rule matches")
    if allowed is None:
        found.blockers.append(
            Blocker(
                "security-group",
                "ingress",
                ids,
                None,
                "ENI_SG_RULES_MISMATCH",
                f"no ingress rule of {ids} (on {d.id}) allows TCP {port} from {source_ip}",
            )
        )


def _check_destination_acl_ingress(
    d: Interface, source_ip: Address, port: int, ctx: Context, found: _Findings
) -> None:
    """The destination subnet's network ACL lets the connection in (not within our own subnet)."""
    if d.nacl is None or _same_subnet(ctx):
        return
    acl = d.nacl["NetworkAclId"]
    e = nacl_decision(d.nacl, False, source_ip, port)
    ok = e["RuleAction"] == "allow"
    found.check(
        "network-acl",
        "ingress",
        acl,
        ok,
        f"rule {_rule_name(e)} {e['RuleAction']}s TCP {port} from {source_ip} into {d.subnet_id}",
    )
    if not ok:
        found.blockers.append(
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


def _check_destination_acl_return(d: Interface, source_ip: Address, ctx: Context, found: _Findings) -> None:
    """The destination subnet's network ACL lets the replies out to our ephemeral ports (not
    within our own subnet)."""
    if d.nacl is None or _same_subnet(ctx):
        return
    lo, hi = ctx.ephemeral
    denied = nacl_denied_ranges(d.nacl, True, source_ip, lo, hi)
    if denied:
        acl = d.nacl["NetworkAclId"]
        found.blockers.append(
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


def _check_port_25_policy(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """The provider's own port-25 block, invisible to its API: a likely (uncertain) blocker when
    port 25 leaves the VPC for an address that is not private."""
    policy = PORT_25_POLICIES.get(ctx.provider or "")
    leaves = not any(_in_cidr(dest, c) for c in ctx.vpc_cidrs) and not is_private_ipv4(dest)
    if not policy:
        return
    if port == 25 and leaves:
        found.blockers.append(
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
        found.check("provider-policy", "egress", ctx.provider, False, "port 25 to an address outside the VPC")
    else:
        found.check(
            "provider-policy",
            "egress",
            ctx.provider,
            True,
            f"port {port} "
            + ("is not restricted" if port != 25 else "to a private/VPC address is not blocked"),
        )


def _verdict(ctx: Context, found: _Findings) -> str:
    """``blocked`` when anything blocks, else ``unknown`` when something went unchecked, else
    ``allowed``."""
    if found.blockers:
        return "blocked"
    if ctx.unchecked or any(c["result"] == "unknown" for c in found.checked):
        return "unknown"
    return "allowed"


def evaluate(ctx: Context, destination: str, port: int) -> Evaluation:
    """Would TCP from ``ctx.source`` reach ``destination``:``port``? Each component on the way
    is checked in turn; every check is listed, and whatever blocks the flow is a blocker."""
    dest = ip_address(destination)
    found = _Findings()
    _check_security_groups(ctx, dest, port, found)
    _check_acl_egress(ctx, dest, port, found)
    _check_acl_return(ctx, dest, port, found)
    target = _check_route_table(ctx, dest, found)
    if target is not None and target.startswith("igw-"):
        _check_internet_gateway(ctx, dest, target, found)
    d, source_ip = ctx.destination, _source_address(ctx.source, dest)
    if d is not None and source_ip is not None:  # the destination's own interface, ours to read
        _check_destination_groups(d, source_ip, port, ctx, found)
        _check_destination_acl_ingress(d, source_ip, port, ctx, found)
        _check_destination_acl_return(d, source_ip, ctx, found)
    _check_port_25_policy(ctx, dest, port, found)
    return Evaluation(str(dest), port, _verdict(ctx, found), found.blockers, found.checked)


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
