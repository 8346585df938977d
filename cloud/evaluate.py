"""Would the cloud let TCP from this host reach (address, port)? Pure rule evaluation.

Takes the EC2 API's own shapes (boto3 dicts) gathered in a :class:`Context`, and answers
which security group, network ACL, route, gateway or provider policy blocks the flow, as AWS
Reachability Analyzer would for this one question, plus what it cannot see: the provider's
port-25 policy. No boto3 here: everything is unit- and property-tested offline.

The path is followed as AWS builds it: our interface's security groups, our subnet's network
ACL (out, and in for the replies), our route table, then the gateway the route names: an
internet gateway (attached, and a public IPv4 for IPv4), an egress-only internet gateway
(IPv6), or a NAT gateway, whose own subnet's network ACL (the connection in from us and out
to the destination, the replies in to the NAT gateway's ports 1024-65535 and out to our
ephemeral ports) and route table (to an attached internet gateway, with the NAT gateway's
public address) are checked in turn. A route to anything else (transit gateway, peering,
VPN...) is not followed: the verdict is then ``unknown``, saying so.

Semantics (EC2 API reference, VPC user guide):
- security groups: allow-only and stateful; the union of every group on the interface;
  protocol ``-1`` is everything; rules name IPv4/IPv6 CIDRs, prefix lists, or groups (whose
  members' private addresses match);
- network ACLs: stateless; rules in ascending number, first match wins, an implicit deny
  after the last (even when the API leaves the ``*`` rule out); IPv4 rules never match
  IPv6; so return traffic needs its own inbound rule for the client's ephemeral ports (a NAT
  gateway's: 1024-65535);
- route tables: longest prefix match; ``blackhole`` routes drop (so does a route to a gateway
  that no longer exists, or a NAT gateway that is deleted or failed); leaving through an
  internet gateway over IPv4 needs a public address, and it drops private (RFC 1918) and
  shared (RFC 6598) destinations; a NAT gateway carries IPv4, and IPv6 only to the NAT64
  prefix 64:ff9b::/96.

Verdicts: ``blocked`` when a component certainly blocks; ``likely-blocked`` when only a
provider policy the API cannot confirm does (``certain: false``); ``unknown`` when something
on the way could not be checked (each such check says why); else ``allowed``.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

Address = IPv4Address | IPv6Address
TCP = "6"
RFC1918 = [ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
RFC6598 = ip_network("100.64.0.0/10")  # shared address space (carrier-grade NAT)
ULA = ip_network("fc00::/7")
NAT64 = ip_network("64:ff9b::/96")  # the well-known prefix a NAT gateway translates to IPv4
NAT_PORTS = (1024, 65535)  # the source ports a NAT gateway uses, so where its replies arrive
VERDICTS = ("allowed", "blocked", "likely-blocked", "unknown")
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
# route targets the evaluation does not follow, by id prefix -> the component's name
NOT_FOLLOWED = {
    "tgw-": "transit-gateway",
    "pcx-": "vpc-peering-connection",
    "vgw-": "virtual-private-gateway",
    "vpce-": "vpc-endpoint",
    "eni-": "network-interface",
    "i-": "instance",
    "lgw-": "local-gateway",
    "cagw-": "carrier-gateway",
    "arn:": "core-network",
}


@dataclass(frozen=True)
class Blocker:
    # security-group | network-acl | route-table | internet-gateway | nat-gateway
    # | egress-only-internet-gateway | network-interface | provider-policy
    component: str
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
class Subnet:
    """A subnet the path crosses besides our own (a NAT gateway's): its network ACL and route
    table, and why either could not be read."""

    id: str
    nacl: dict | None = None
    route_table: dict | None = None
    unread: dict[str, str] = field(default_factory=dict)  # network-acl | route-table -> why not


@dataclass
class Context:
    provider: str | None  # aws, gcp, azure or None
    source: Interface
    destination: Interface | None = None  # when the destination is an interface we can read
    vpc_cidrs: list[str] = field(default_factory=list)
    prefix_lists: dict[str, list[str]] = field(default_factory=dict)  # pl-id -> CIDRs
    group_members: dict[str, list[str]] = field(default_factory=dict)  # sg-id -> private addresses
    # igw-/nat-/eigw- id -> its Describe* item; None when it does not exist (the route is a
    # blackhole); absent when it could not be read (``unread`` says why)
    gateways: dict[str, dict | None] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)  # the NAT gateways' subnets, by id
    ephemeral: tuple[int, int] = (32768, 60999)  # this host's source ports (Linux default)
    unchecked: dict[str, str] = field(default_factory=dict)  # component -> missing permission/why
    unread: dict[str, str] = field(default_factory=dict)  # gateway id -> why it was not read
    configuration: bool = True  # False: the provider's configuration is not read, only its policy


def policy_only(provider: str, ephemeral: tuple[int, int]) -> Context:
    """A context for a cloud whose configuration is not read: only its provider policy."""
    return Context(
        provider=provider,
        source=Interface(None, None, None),
        ephemeral=ephemeral,
        unchecked={"firewall": f"{provider} firewall rules are not read by mailpath"},
        configuration=False,
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


def is_private(addr: Address) -> bool:
    """A private address (RFC 1918, or IPv6 unique local fc00::/7): no provider's port-25 policy
    applies to it."""
    return is_private_ipv4(addr) or (addr.version == 6 and addr in ULA)


def local_scope(addr: Address) -> str | None:
    """``loopback``, ``unspecified`` or ``link-local`` for a destination the cloud's network never
    carries (no security group, ACL, route or provider policy applies), else None."""
    if addr.is_loopback:
        return "loopback"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_link_local:
        return "link-local"
    return None


# -- the whole question --------------------------------------------------------------------


@dataclass
class Evaluation:
    destination: str
    port: int
    verdict: str  # allowed | blocked | likely-blocked | unknown
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
    said: set[str] = field(default_factory=set)  # the Context.unchecked entries already reported

    def check(
        self,
        component: str,
        direction: str,
        id_: str | None,
        ok: bool | None,
        detail: str,
        *,
        likely: bool = False,
    ) -> None:
        """Record one component looked at; ``ok`` is None when it could not be checked (then
        ``detail`` says why); ``likely``: it probably blocks (a policy the API cannot confirm)."""
        result = "unknown" if ok is None else ("allowed" if ok else "blocked")
        self.checked.append(
            {
                "component": component,
                "direction": direction,
                "id": id_,
                "result": "likely-blocked" if likely and result == "blocked" else result,
                "detail": detail,
            }
        )

    def block(
        self, component: str, direction: str, id_: str | None, rule: str | None, code: str, msg: str
    ) -> None:
        self.blockers.append(Blocker(component, direction, id_, rule, code, msg))


def _why(what: str, reason: str | None) -> str:
    """``could not check WHAT: WHY``; a missing permission (``ec2:...``) is named as needed."""
    if not reason:
        reason = "it was not read"
    elif reason.startswith("ec2:"):
        reason = f"needs {reason}"
    return f"could not check {what}: {reason}"


def _unread(ctx: Context, component: str, found: _Findings) -> str:
    """Why one of our own components (a Context.unchecked key) could not be checked."""
    found.said.add(component)
    why = ctx.unchecked.get(component)
    if why is None and not ctx.source.subnet_id and component in ("network-acl", "route-table"):
        why = "this host's subnet is not known"
    return _why(component, why)


def _same_subnet(ctx: Context) -> bool:
    """Whether the destination is an interface in our own subnet, where no network ACL applies."""
    d = ctx.destination
    return d is not None and d.subnet_id is not None and d.subnet_id == ctx.source.subnet_id


def _check_source_address(ctx: Context, dest: Address, found: _Findings) -> None:
    """Over IPv6 our interface needs an IPv6 address to send from (none: nothing leaves)."""
    src = ctx.source
    if dest.version != 6 or src.ipv6s or not src.subnet_id:
        return
    found.check("network-interface", "egress", src.id, False, "no IPv6 address")
    found.block(
        "network-interface",
        "egress",
        src.id,
        None,
        "ENI_ADDRESS_RESTRICTION",
        f"{src.id or 'the interface'} has no IPv6 address, so it cannot send to {dest} (assign it "
        "one; its subnet needs an IPv6 CIDR block)",
    )


def _check_security_groups(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """Our interface's security groups let the connection out (stateful: the replies follow)."""
    src = ctx.source
    if src.groups is None:
        found.check("security-group", "egress", None, None, _unread(ctx, "security-group", found))
        return
    ids = ",".join(g["GroupId"] for g in src.groups) or None
    allowed = security_groups(src.groups, dest, port, ctx, egress=True)
    found.check("security-group", "egress", ids, allowed is not None, allowed or "no egress rule matches")
    if allowed is None:
        empty = all(not g.get("IpPermissionsEgress") for g in src.groups)
        found.block(
            "security-group",
            "egress",
            ids,
            None,
            "SG_HAS_NO_RULES" if empty else "ENI_SG_RULES_MISMATCH",
            f"no egress rule of {ids or 'the interface (no groups)'} allows TCP {port} to {dest}"
            + (" (the groups have no egress rules at all)" if empty else ""),
        )


def _acl_port(found: _Findings, nacl: dict, egress: bool, peer: Address, port: int, what: str) -> None:
    """One packet's way through ``nacl``: ``what`` (TCP ``port`` to/from ``peer``) is allowed by
    the first matching rule, or denied (SUBNET_ACL_RESTRICTION)."""
    acl = nacl.get("NetworkAclId")
    e = nacl_decision(nacl, egress, peer, port)
    ok, rule = e["RuleAction"] == "allow", _rule_name(e)
    direction = "egress" if egress else "ingress"
    found.check("network-acl", direction, acl, ok, f"rule {rule} {'allows' if ok else 'denies'} {what}")
    if not ok:
        found.block(
            "network-acl", direction, acl, rule, "SUBNET_ACL_RESTRICTION", f"{acl} rule {rule} denies {what}"
        )


def _acl_replies(
    found: _Findings, nacl: dict, egress: bool, peer: Address, ports: tuple[int, int], what: str, why: str
) -> None:
    """The replies' way through ``nacl`` (stateless, so every port they may arrive at counts):
    ``what`` to the ports ``ports``, to/from ``peer``; ``why`` (with ``{every}``) says what a
    denied part does."""
    acl = nacl.get("NetworkAclId")
    lo, hi = ports
    denied = nacl_denied_ranges(nacl, egress, peer, lo, hi)
    direction = "egress" if egress else "ingress"
    found.check(
        "network-acl",
        direction,
        acl,
        not denied,
        f"{what} at ports {lo}-{hi}: "
        + (
            "allowed"
            if not denied
            else ", ".join(f"{a}-{b} denied by rule {_rule_name(x)}" for a, b, x in denied)
        ),
    )
    if denied:
        parts = ", ".join(f"{a}-{b} (rule {_rule_name(x)})" for a, b, x in denied)
        every = "every" if denied == [(lo, hi, denied[0][2])] else "some"
        found.block(
            "network-acl",
            direction,
            acl,
            _rule_name(denied[0][2]),
            "SUBNET_ACL_RESTRICTION",
            f"{acl} denies {what} at ports {parts}; {why.format(every=every)}",
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
        found.check("network-acl", "egress", None, None, _unread(ctx, "network-acl", found))
        return
    _acl_port(found, src.nacl, True, dest, port, f"outbound TCP {port} to {dest}")


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
        found.block(
            "network-acl",
            "ingress",
            acl,
            _rule_name(denied[0][2]),
            "SUBNET_ACL_RESTRICTION",
            f"{acl} lets TCP {port} out but denies the replies from {dest} to ephemeral ports "
            f"{parts}; this host uses {lo}-{hi}, so {every} connection fails (ACLs do not "
            "track connections: an inbound rule must allow the replies)",
        )


def _dead_gateway(ctx: Context, target: str) -> str | None:
    """Why a route's gateway cannot carry anything (AWS shows such routes as blackholes; some
    emulators keep them "active"), or None."""
    if target not in ctx.gateways:
        return None
    gw = ctx.gateways[target]
    if gw is None:
        return "no longer exists"
    state = gw.get("State")
    return f"is {state}" if state in ("deleted", "deleting", "failed") else None


def _check_route(
    ctx: Context,
    table: dict | None,
    dest: Address,
    found: _Findings,
    why: str,
    where: str = "",
    hint: str = "",
) -> str | None:
    """``table`` has a live route to ``dest``; returns that route's target (None when the table
    is unread — ``why`` says why —, has no route, or the route is a blackhole). ``where`` names
    whose table it is, ``hint`` what a missing route means there."""
    if table is None:
        found.check("route-table", "egress", None, None, why)
        return None
    rtb = table.get("RouteTableId")
    hit = longest_prefix_route(table, dest, ctx.prefix_lists)
    if hit is None:
        found.check("route-table", "egress", rtb, False, f"no route matches {dest}")
        found.block(
            "route-table",
            "egress",
            rtb,
            None,
            "NO_ROUTE_TO_DESTINATION",
            f"{rtb}{where} has no route to {dest}"
            + ("" if dest.version == 4 else " (no IPv6 default route ::/0)")
            + hint,
        )
        return None
    route, cidr = hit
    target = _target(route)
    dead = _dead_gateway(ctx, target)
    state = "blackhole" if dead else route.get("State", "active")
    found.check("route-table", "egress", rtb, state != "blackhole", f"{cidr} via {target} ({state})")
    if state == "blackhole":
        found.block(
            "route-table",
            "egress",
            rtb,
            cidr,
            "ROUTE_BLACKHOLE",
            f"{rtb}{where} sends {dest} by {cidr} to {target}, which "
            f"{dead or 'no longer exists'} (blackhole)",
        )
        return None
    return target


def _check_route_table(ctx: Context, dest: Address, found: _Findings) -> str | None:
    """Our route table has a live route to ``dest``; returns that route's target."""
    table = ctx.source.route_table
    why = _unread(ctx, "route-table", found) if table is None else ""
    return _check_route(ctx, table, dest, found, why)


def _follow(ctx: Context, dest: Address, port: int, target: str | None, found: _Findings) -> None:
    """Where our route leads: the VPC itself, or a gateway, checked in turn; anything else is
    not followed (and said so)."""
    src = ctx.source
    if target is None or target == "local":
        return
    if target.startswith("igw-"):
        _check_internet_gateway(
            ctx,
            dest,
            target,
            found,
            src.public_ip,
            src.id or "the interface",
            "add an Elastic IP, or route via a NAT gateway",
        )
    elif target.startswith("eigw-"):
        _check_egress_only_gateway(ctx, dest, target, found)
    elif target.startswith("nat-"):
        _check_nat_gateway(ctx, dest, port, target, found)
    else:
        _not_followed(target, found)


def _not_followed(target: str, found: _Findings) -> None:
    name = next((c for p, c in NOT_FOLLOWED.items() if target.startswith(p)), "route-target")
    found.check(
        name,
        "egress",
        target,
        None,
        f"could not check {name} {target}: mailpath does not follow the path beyond it "
        "(Reachability Analyzer can)",
    )


def _attached(gw: dict) -> bool:
    return any(a.get("State") in ("available", "attached") for a in gw.get("Attachments", []))


def _check_internet_gateway(
    ctx: Context,
    dest: Address,
    igw: str,
    found: _Findings,
    public_ip: str | None,
    sender: str,
    fix: str,
    note: str = "",
) -> None:
    """The internet gateway a route leads to: attached to the VPC; a destination it forwards
    (not a private or shared IPv4 address); and, over IPv4, a public address for ``sender`` (our
    interface, or the NAT gateway) to leave with."""
    before = len(found.blockers)
    gw = ctx.gateways.get(igw)
    if gw is not None and not _attached(gw):
        found.block(
            "internet-gateway", "egress", igw, None, "IGW_NOT_ATTACHED", f"{igw} is not attached to the VPC"
        )
    if dest.version == 4 and (is_private_ipv4(dest) or dest in RFC6598):
        rfc = "RFC1918" if is_private_ipv4(dest) else "RFC6598"
        found.block(
            "internet-gateway",
            "egress",
            igw,
            None,
            f"IGW_DESTINATION_ADDRESS_NOT_IN_{rfc}_EGRESS",
            f"{igw} drops outbound traffic to {dest}, a {'private' if rfc == 'RFC1918' else 'shared'} "
            f"({rfc[:3]} {rfc[3:]}) address: reach it through a VPN, peering or transit gateway route",
        )
    if dest.version == 4 and not public_ip:
        found.block(
            "internet-gateway",
            "egress",
            igw,
            None,
            "IGW_PUBLIC_IP_ASSOCIATION_FOR_EGRESS",
            f"{sender}{note} has no public IPv4 address, so {igw} cannot carry its traffic to {dest} ({fix})",
        )
    blocked = len(found.blockers) > before
    if igw not in ctx.gateways:
        found.check(
            "internet-gateway",
            "egress",
            igw,
            False if blocked else None,
            _why(f"internet-gateway {igw}", ctx.unread.get(igw)),
        )
        return
    found.check(
        "internet-gateway",
        "egress",
        igw,
        not blocked,
        ("attached" if gw is None or _attached(gw) else "not attached")
        + (
            f"; public IPv4 of {sender}: {public_ip or 'none'}"
            if dest.version == 4
            else "; IPv6: no public IPv4 needed"
        ),
    )


def _check_egress_only_gateway(ctx: Context, dest: Address, eigw: str, found: _Findings) -> None:
    """An egress-only internet gateway (IPv6): attached to the VPC, it lets connections out and
    their replies in, with no public IPv4."""
    if eigw not in ctx.gateways:
        found.check(
            "egress-only-internet-gateway",
            "egress",
            eigw,
            None,
            _why(f"egress-only-internet-gateway {eigw}", ctx.unread.get(eigw)),
        )
        return
    gw = ctx.gateways[eigw] or {}
    ok = _attached(gw)
    found.check(
        "egress-only-internet-gateway",
        "egress",
        eigw,
        ok,
        "attached: IPv6 connections out, their replies in" if ok else "not attached",
    )
    if not ok:
        found.block(
            "egress-only-internet-gateway",
            "egress",
            eigw,
            None,
            "BAD_STATE_ATTACHMENT",
            f"{eigw} is not attached to the VPC, so IPv6 to {dest} cannot leave through it",
        )


def _nat_outside(dest: Address) -> Address | None:
    """The address a NAT gateway sends to: ``dest`` itself over IPv4, the IPv4 address embedded in
    64:ff9b::/96 (NAT64); None for any other IPv6 address, which a NAT gateway does not carry."""
    if dest.version == 4:
        return dest
    if dest in NAT64:
        return IPv4Address(int(dest) & 0xFFFFFFFF)
    return None


def _check_nat_gateway(ctx: Context, dest: Address, port: int, nat_id: str, found: _Findings) -> None:
    """The path through a NAT gateway, as AWS builds it: the gateway itself (available; IPv4, or
    NAT64), its subnet's network ACL both ways, its subnet's route table, and the internet gateway
    that table leads to, which the NAT gateway leaves through with its own public address."""
    if nat_id not in ctx.gateways:
        found.check(
            "nat-gateway", "egress", nat_id, None, _why(f"nat-gateway {nat_id}", ctx.unread.get(nat_id))
        )
        return
    nat = ctx.gateways[nat_id] or {}  # a NAT gateway that does not exist made the route a blackhole
    state = nat.get("State") or "available"
    if state != "available":
        found.check("nat-gateway", "egress", nat_id, False, f"state: {state}")
        found.block(
            "nat-gateway",
            "egress",
            nat_id,
            None,
            "BAD_STATE",
            f"{nat_id} is {state}, not available: it forwards nothing",
        )
        return
    out = _nat_outside(dest)
    if out is None:
        found.check("nat-gateway", "egress", nat_id, False, f"{dest} is IPv6, outside {NAT64}")
        found.block(
            "nat-gateway",
            "egress",
            nat_id,
            None,
            "NO_POSSIBLE_DESTINATION",
            f"{nat_id} carries IPv4 (and IPv6 to {NAT64} by NAT64), not IPv6 to {dest}: route "
            "IPv6 through an egress-only internet gateway (::/0 -> eigw-...)",
        )
        return
    kind = nat.get("ConnectivityType") or "public"
    addresses = nat.get("NatGatewayAddresses") or []
    public = next((a["PublicIp"] for a in addresses if a.get("PublicIp")), None)
    private = next((a["PrivateIp"] for a in addresses if a.get("PrivateIp")), None)
    subnet_id = nat.get("SubnetId")
    found.check(
        "nat-gateway",
        "egress",
        nat_id,
        True,
        f"{kind}, available, in {subnet_id}: "
        + (f"{dest} is {out} by NAT64; " if out != dest else "")
        + f"sends from {public or private or 'its address'}, source ports {NAT_PORTS[0]}-{NAT_PORTS[1]}",
    )
    sub = ctx.subnets.get(subnet_id or "")
    where = f"{nat_id}'s subnet {subnet_id}"
    if sub is None:
        for component in ("network-acl", "route-table"):
            found.check(component, "egress", None, None, _why(f"{component} of {where}", "it was not read"))
        return
    _check_nat_acl(ctx, dest, out, port, nat_id, sub, found)
    target = _check_route(
        ctx,
        sub.route_table,
        out,
        found,
        _why(f"route-table of {where}", sub.unread.get("route-table")),
        f" ({where})",
        f": {nat_id} needs a route to an internet gateway (0.0.0.0/0 -> igw-...)",
    )
    if target is None:
        return
    if target.startswith("igw-"):
        _check_internet_gateway(
            ctx,
            out,
            target,
            found,
            public if kind != "private" else None,
            nat_id,
            "a private NAT gateway reaches other networks through a transit or virtual private "
            "gateway; use a public NAT gateway with an Elastic IP for the internet"
            if kind == "private"
            else "give the NAT gateway an Elastic IP",
            " (a private NAT gateway)" if kind == "private" else "",
        )
    elif target == nat_id:
        found.block(
            "route-table",
            "egress",
            (sub.route_table or {}).get("RouteTableId"),
            None,
            "NO_ROUTE_TO_DESTINATION",
            f"{(sub.route_table or {}).get('RouteTableId')} ({where}) sends {out} back to {nat_id} "
            "itself: the NAT gateway's subnet needs a route to an internet gateway",
        )
    else:
        _not_followed(target, found)


def _check_nat_acl(
    ctx: Context, dest: Address, out: Address, port: int, nat_id: str, sub: Subnet, found: _Findings
) -> None:
    """The NAT gateway's subnet's network ACL, both ways (it is stateless): our connection in and
    on to the destination, the replies in to the NAT gateway's ports 1024-65535 and on to our
    ephemeral ports. Our traffic to a NAT gateway in our own subnet meets no ACL on the way."""
    where = f"{nat_id}'s subnet {sub.id}"
    if sub.nacl is None:
        found.check(
            "network-acl",
            "egress",
            None,
            None,
            _why(f"network-acl of {where}", sub.unread.get("network-acl")),
        )
        return
    src = _source_address(ctx.source, dest)
    between = sub.id != ctx.source.subnet_id
    if between and src is None:
        found.check(
            "network-acl",
            "ingress",
            sub.nacl.get("NetworkAclId"),
            None,
            f"could not check the way into {where}: this host's address is not known",
        )
    if between and src is not None:
        _acl_port(found, sub.nacl, False, src, port, f"TCP {port} from {src} into {where}")
    _acl_port(found, sub.nacl, True, out, port, f"outbound TCP {port} from {where} to {out}")
    _acl_replies(
        found,
        sub.nacl,
        False,
        out,
        NAT_PORTS,
        f"the replies from {out} port {port} into {where}",
        f"{nat_id} sends from ports {NAT_PORTS[0]}-{NAT_PORTS[1]}, so {{every}} connection fails "
        f"(ACLs do not track connections: an inbound rule must allow {NAT_PORTS[0]}-{NAT_PORTS[1]} "
        "from the destination)",
    )
    if between and src is not None:
        lo, hi = ctx.ephemeral
        _acl_replies(
            found,
            sub.nacl,
            True,
            src,
            ctx.ephemeral,
            f"the replies {nat_id} forwards out of {where} to {src}",
            f"this host uses {lo}-{hi}, so {{every}} connection fails (an outbound rule must allow "
            "the replies to this host's ephemeral ports)",
        )


def _check_destination_groups(
    d: Interface, source_ip: Address, port: int, ctx: Context, found: _Findings
) -> None:
    """The destination interface's own security groups let the connection in."""
    if d.groups is None:
        if "destination-security-group" in ctx.unchecked:
            found.check(
                "security-group", "ingress", None, None, _unread(ctx, "destination-security-group", found)
            )
        return
    ids = ",".join(g["GroupId"] for g in d.groups)
    allowed = security_groups(d.groups, source_ip, port, ctx, egress=False)
    found.check("security-group", "ingress", ids, allowed is not None, allowed or "no ingress rule matches")
    if allowed is None:
        found.block(
            "security-group",
            "ingress",
            ids,
            None,
            "ENI_SG_RULES_MISMATCH",
            f"no ingress rule of {ids} (on {d.id}) allows TCP {port} from {source_ip}",
        )


def _check_destination_acl_ingress(
    d: Interface, source_ip: Address, port: int, ctx: Context, found: _Findings
) -> None:
    """The destination subnet's network ACL lets the connection in (not within our own subnet)."""
    if _same_subnet(ctx):
        return
    if d.nacl is None:
        if "destination-network-acl" in ctx.unchecked:
            found.check("network-acl", "ingress", None, None, _unread(ctx, "destination-network-acl", found))
        return
    _acl_port(
        found,
        d.nacl,
        False,
        source_ip,
        port,
        f"TCP {port} from {source_ip} into the destination's subnet {d.subnet_id}",
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
        found.block(
            "network-acl",
            "egress",
            acl,
            _rule_name(denied[0][2]),
            "SUBNET_ACL_RESTRICTION",
            f"{acl} (destination subnet) denies the replies to {source_ip} ports "
            + ", ".join(f"{a}-{b}" for a, b, _ in denied),
        )


def _check_port_25_policy(ctx: Context, dest: Address, port: int, found: _Findings) -> None:
    """The provider's own port-25 block, invisible to its API: a likely (uncertain) blocker when
    port 25 leaves the VPC for a public address (never a private one: RFC 1918, ULA)."""
    policy = PORT_25_POLICIES.get(ctx.provider or "")
    if not policy:
        return
    inside = any(_in_cidr(dest, c) for c in ctx.vpc_cidrs)
    if port == 25 and not inside and not is_private(dest):
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
        found.check(
            "provider-policy",
            "egress",
            ctx.provider,
            False,
            f"port 25 to {dest}, a public address",
            likely=True,
        )
        return
    found.check(
        "provider-policy",
        "egress",
        ctx.provider,
        True,
        f"port {port} is not restricted"
        if port != 25
        else f"port 25 to {dest}, "
        + ("inside the VPC" if inside else "a private address")
        + ", is not restricted",
    )


def _verdict(found: _Findings) -> str:
    """``blocked`` when a component certainly blocks; ``likely-blocked`` when only an uncertain
    blocker (a provider policy) does; else ``unknown`` when something could not be checked;
    else ``allowed``."""
    if any(b.certain for b in found.blockers):
        return "blocked"
    if found.blockers:
        return "likely-blocked"
    if any(c["result"] == "unknown" for c in found.checked):
        return "unknown"
    return "allowed"


def evaluate(ctx: Context, destination: str, port: int) -> Evaluation:
    """Would TCP from ``ctx.source`` reach ``destination``:``port``? Each component on the way
    is checked in turn; every check is listed, and whatever blocks the flow is a blocker."""
    given = ip_address(destination)
    dest = (given.ipv4_mapped or given) if given.version == 6 else given
    found = _Findings()
    scope = local_scope(dest)
    if scope is not None:
        found.check(
            "destination",
            "egress",
            None,
            True,
            f"{given} is {scope}: the traffic never reaches the cloud's network, so no security "
            "group, ACL, route or provider policy applies",
        )
        return Evaluation(str(given), port, "allowed", [], found.checked)
    if ctx.configuration:
        _check_source_address(ctx, dest, found)
        _check_security_groups(ctx, dest, port, found)
        _check_acl_egress(ctx, dest, port, found)
        _check_acl_return(ctx, dest, port, found)
        _follow(ctx, dest, port, _check_route_table(ctx, dest, found), found)
        d, source_ip = ctx.destination, _source_address(ctx.source, dest)
        if d is not None and source_ip is not None:  # the destination's own interface, ours to read
            _check_destination_groups(d, source_ip, port, ctx, found)
            _check_destination_acl_ingress(d, source_ip, port, ctx, found)
            _check_destination_acl_return(d, source_ip, ctx, found)
    for component in ctx.unchecked:  # whatever else could not be read (the firewall, the interface)
        if component not in found.said and (ctx.configuration or component not in _OWN):
            found.check(component, "egress", None, None, _unread(ctx, component, found))
    _check_port_25_policy(ctx, dest, port, found)
    return Evaluation(str(given), port, _verdict(found), found.blockers, found.checked)


# the components of our own that the path checks report themselves when unread
_OWN = ("security-group", "network-acl", "route-table")


def missing_permissions(ctx: Context, actions: list[str]) -> list[dict]:
    """Each missing permission with what it kept from being checked."""
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()

    def add(component: str, action: str) -> None:
        if action.startswith("ec2:") and (component, action) not in seen:
            seen.add((component, action))
            out.append(
                {
                    "action": action,
                    "component": component,
                    "message": f"could not check {component}: needs {action}",
                }
            )

    for component, action in ctx.unchecked.items():
        add(component, action)
    for gw, action in ctx.unread.items():
        add(_gateway_component(gw), action)
    for sub in ctx.subnets.values():
        for component, action in sub.unread.items():
            add(component, action)
    named = {m["action"] for m in out}
    out += [{"action": a, "component": None, "message": f"needs {a}"} for a in actions if a not in named]
    return out


def _gateway_component(gw: str) -> str:
    if gw.startswith("eigw-"):
        return "egress-only-internet-gateway"
    return "nat-gateway" if gw.startswith("nat-") else "internet-gateway"


def _source_address(src: Interface, dest: Address) -> Address | None:
    pool = src.ipv6s if dest.version == 6 else src.private_ips
    return ipaddress.ip_address(pool[0]) if pool else None
