"""Reading AWS: this instance through IMDSv2, its network configuration through the EC2 API.

boto3 is used unchanged (credentials, region and endpoints the standard way: profiles,
environment, instance role, ``AWS_ENDPOINT_URL_EC2``), with botocore's ``standard`` retry
mode for throttling. Each API call is made at most once per run (results are cached) and
paginated. A call the credentials may not make is recorded as a missing permission and the
rest of the evaluation goes on. The path is read as AWS builds it: our interface, its subnet's
ACL and route table, the gateways the routes name, and for a NAT gateway its own subnet's ACL
and route table (and the gateways those routes name); judging it is the evaluator's part. Only
the read-only actions in ``deploy/iam-policy.json`` are used; ``ACTIONS`` lists them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import ip_address

from mailpath.cloud.evaluate import Context, Interface, Subnet
from mailpath.probes.errors import CannotRun

# API operation -> the IAM action it needs (all read-only; Describe* need Resource "*")
ACTIONS = {
    op: f"ec2:{op}"
    for op in (
        "DescribeInstances",
        "DescribeNetworkInterfaces",
        "DescribeSecurityGroups",
        "DescribeNetworkAcls",
        "DescribeRouteTables",
        "DescribeVpcs",
        "DescribeInternetGateways",
        "DescribeNatGateways",
        "DescribeEgressOnlyInternetGateways",
        "GetManagedPrefixListEntries",
    )
}
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnauthorizedAccess"}
_NOT_FOUND_SUFFIX = "NotFound"  # InvalidInternetGatewayID.NotFound, NatGatewayNotFound...


class Unreadable(Exception):
    """A component could not be read; ``reason`` says why (for permissions: the IAM action)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingPermission(Unreadable):
    pass


class NotFound(Exception):
    pass


@dataclass
class Identity:
    """Who we are, from IMDS or from the command line."""

    instance_id: str | None = None
    eni_id: str | None = None
    region: str | None = None
    mac: str | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_groups: list[str] = field(default_factory=list)
    private_ips: list[str] = field(default_factory=list)
    ipv6s: list[str] = field(default_factory=list)
    public_ip: str | None = None
    source: str = "arguments"  # or "imds"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


def imds_identity(timeout: float = 1.0) -> Identity | None:
    """This instance as IMDSv2 describes it (token first), or None when there is no IMDS.

    botocore's own IMDS client is used, so ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (and the
    IPv6 endpoint mode, and ``AWS_EC2_METADATA_DISABLED``) are honoured as everywhere else.
    """
    import botocore.session
    from botocore.exceptions import BotoCoreError
    from botocore.utils import BadIMDSRequestError, IMDSFetcher, _RetriesExceededError

    no_imds = (BotoCoreError, BadIMDSRequestError, _RetriesExceededError, OSError)

    session = botocore.session.get_session()
    config = {
        "ec2_metadata_service_endpoint": session.get_config_variable("ec2_metadata_service_endpoint"),
        "ec2_metadata_service_endpoint_mode": session.get_config_variable(
            "ec2_metadata_service_endpoint_mode"
        ),
    }
    fetcher = IMDSFetcher(timeout=timeout, num_attempts=1, config=config)
    try:
        token = fetcher._fetch_metadata_token()
    except no_imds:
        return None
    if not token:
        return None

    def get(path: str) -> str | None:
        try:
            r = fetcher._get_request(f"latest/{path}", lambda resp: resp.status_code >= 500, token)
        except no_imds:
            return None
        return r.text.strip() if r.status_code == 200 else None

    mac = get("meta-data/mac")
    base = f"meta-data/network/interfaces/macs/{mac}/"
    lines = lambda path: (get(base + path) or "").split()  # noqa: E731
    return Identity(
        instance_id=get("meta-data/instance-id"),
        region=get("meta-data/placement/region"),
        mac=mac,
        eni_id=get(base + "interface-id"),
        subnet_id=get(base + "subnet-id"),
        vpc_id=get(base + "vpc-id"),
        security_groups=lines("security-group-ids"),
        private_ips=lines("local-ipv4s"),
        ipv6s=lines("ipv6s"),
        public_ip=(lines("public-ipv4s") or [None])[0],
        source="imds",
    )


def find_identity(
    instance_id: str | None, eni: str | None, region: str | None, *, ask_imds: bool, imds_timeout: float = 1.0
) -> Identity | None:
    """Who to evaluate: the instance or interface named, else (when asked) IMDS's answer."""
    if instance_id or eni:
        return Identity(instance_id=instance_id, eni_id=eni, region=region)
    who = imds_identity(imds_timeout) if ask_imds else None
    if who is not None:
        who.region = region or who.region
    return who


class Reader:
    """EC2 Describe calls, each made once, with missing permissions turned into records."""

    def __init__(self, region: str | None, client=None) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "ec2", region_name=region, config=Config(retries={"mode": "standard", "max_attempts": 5})
            )
        self.client = client
        self.missing: list[str] = []
        self._cache: dict[str, object] = {}

    def call(self, op: str, key: str, **params) -> list:
        """All pages of ``op``'s ``key`` list. Raises MissingPermission, NotFound, or
        Unreadable for other API failures (a server error, an unsupported filter)."""
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.parsers import ResponseParserError

        cache_key = json.dumps([op, params], sort_keys=True)
        if cache_key in self._cache:
            cached = self._cache[cache_key]
            if isinstance(cached, Exception):
                raise cached
            return cached
        method = "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")
        try:
            if self.client.can_paginate(method):
                items = [
                    x for page in self.client.get_paginator(method).paginate(**params) for x in page[key]
                ]
            else:
                items = getattr(self.client, method)(**params)[key]
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in _DENIED:
                err: Exception = MissingPermission(ACTIONS[op])
                if ACTIONS[op] not in self.missing:
                    self.missing.append(ACTIONS[op])
            elif code.endswith(_NOT_FOUND_SUFFIX):
                err = NotFound(code)
            elif code.startswith(("Invalid", "Throttling", "RequestLimitExceeded")):
                raise  # a bad request, or throttling that outlasted the retries: not ours to hide
            else:
                err = Unreadable(f"{op} failed: {code}")
            self._cache[cache_key] = err
            raise err from None
        except (BotoCoreError, ResponseParserError) as e:
            if type(e).__name__ in ("NoCredentialsError", "NoRegionError", "EndpointConnectionError"):
                raise
            err = Unreadable(f"{op} failed: {e}")
            self._cache[cache_key] = err
            raise err from None
        self._cache[cache_key] = items
        return items


def _interface_from_api(eni: dict) -> tuple[Interface, list[str]]:
    """An Interface from a DescribeNetworkInterfaces item, and its security group ids."""
    return Interface(
        id=eni["NetworkInterfaceId"],
        subnet_id=eni.get("SubnetId"),
        vpc_id=eni.get("VpcId"),
        private_ips=[p["PrivateIpAddress"] for p in eni.get("PrivateIpAddresses", [])]
        or ([eni["PrivateIpAddress"]] if eni.get("PrivateIpAddress") else []),
        ipv6s=[a["Ipv6Address"] for a in eni.get("Ipv6Addresses", [])],
        public_ip=(eni.get("Association") or {}).get("PublicIp"),
    ), [g["GroupId"] for g in eni.get("Groups", [])]


def _own_interface(r: Reader, who: Identity, unchecked: dict) -> tuple[Interface, list[str]]:
    """Our interface: from the API when allowed, else from what IMDS said."""
    try:
        if who.eni_id:
            enis = r.call("DescribeNetworkInterfaces", "NetworkInterfaces", NetworkInterfaceIds=[who.eni_id])
        else:
            reservations = r.call("DescribeInstances", "Reservations", InstanceIds=[who.instance_id])
            attached = [
                eni
                for res in reservations
                for inst in res["Instances"]
                for eni in inst.get("NetworkInterfaces", [])
            ]
            attached.sort(
                key=lambda e: (e.get("MacAddress") != who.mac, e.get("Attachment", {}).get("DeviceIndex", 0))
            )
            enis = attached[:1]
        if enis:
            return _interface_from_api(enis[0])
    except Unreadable as e:
        unchecked["interface"] = e.reason
    except NotFound as e:
        raise CannotRun(f"{who.eni_id or who.instance_id} not found ({e})") from None
    if not who.subnet_id:
        raise CannotRun("could not read this host's network interface (no IMDS data, no permission)")
    return Interface(
        who.eni_id, who.subnet_id, who.vpc_id, who.private_ips, who.ipv6s, who.public_ip
    ), who.security_groups


def _groups(r: Reader, ids: list[str], ctx: Context, component: str) -> list[dict] | None:
    if not ids:
        return []
    try:
        groups = r.call("DescribeSecurityGroups", "SecurityGroups", GroupIds=sorted(ids))
    except Unreadable as e:
        ctx.unchecked[component] = e.reason
        return None
    for g in groups:
        for perm in g.get("IpPermissions", []) + g.get("IpPermissionsEgress", []):
            for pl in perm.get("PrefixListIds", []):
                _prefix_list(r, pl["PrefixListId"], ctx)
            for pair in perm.get("UserIdGroupPairs", []):
                gid = pair.get("GroupId")
                if gid and gid not in ctx.group_members:
                    try:
                        members = r.call(
                            "DescribeNetworkInterfaces",
                            "NetworkInterfaces",
                            Filters=[{"Name": "group-id", "Values": [gid]}],
                        )
                    except Unreadable:
                        members = []
                    ifaces = [_interface_from_api(m)[0] for m in members]
                    ctx.group_members[gid] = [a for i in ifaces for a in i.private_ips + i.ipv6s]
    return groups


def _prefix_list(r: Reader, pl: str, ctx: Context) -> None:
    if pl in ctx.prefix_lists:
        return
    try:
        entries = r.call("GetManagedPrefixListEntries", "Entries", PrefixListId=pl)
    except (Unreadable, NotFound):
        entries = []
    ctx.prefix_lists[pl] = [e["Cidr"] for e in entries]


def _subnet_nacl(r: Reader, subnet: str, vpc: str | None) -> tuple[dict | None, str | None]:
    """The subnet's network ACL (its association, else the VPC's default ACL), or None and why."""
    try:
        acls = r.call(
            "DescribeNetworkAcls",
            "NetworkAcls",
            Filters=[{"Name": "association.subnet-id", "Values": [subnet]}],
        )
        if not acls and vpc:
            acls = r.call(
                "DescribeNetworkAcls",
                "NetworkAcls",
                Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default", "Values": ["true"]}],
            )
    except Unreadable as e:
        return None, e.reason
    if not acls:
        return None, f"no network ACL is associated with {subnet}, nor a default one in {vpc or 'its VPC'}"
    return acls[0], None


def _route_table(r: Reader, subnet: str, vpc: str | None, ctx: Context) -> tuple[dict | None, str | None]:
    """The subnet's route table (its association, else the VPC's main table), or None and why;
    the gateways and prefix lists its routes name are read into ``ctx``."""
    try:
        tables = r.call(
            "DescribeRouteTables",
            "RouteTables",
            Filters=[{"Name": "association.subnet-id", "Values": [subnet]}],
        )
        if not tables and vpc:  # no explicit association: the VPC's main table
            tables = r.call(
                "DescribeRouteTables",
                "RouteTables",
                Filters=[
                    {"Name": "vpc-id", "Values": [vpc]},
                    {"Name": "association.main", "Values": ["true"]},
                ],
            )
    except Unreadable as e:
        return None, e.reason
    if not tables:
        return None, f"no route table is associated with {subnet}, nor a main one in {vpc or 'its VPC'}"
    table = tables[0]
    for route in table.get("Routes", []):
        if route.get("DestinationPrefixListId"):
            _prefix_list(r, route["DestinationPrefixListId"], ctx)
        _gateway(r, route, ctx)
    return table, None


# gateway id prefix -> the call that describes it: (operation, result key, ids parameter)
_GATEWAYS = {
    "igw-": ("DescribeInternetGateways", "InternetGateways", "InternetGatewayIds"),
    "nat-": ("DescribeNatGateways", "NatGateways", "NatGatewayIds"),
    "eigw-": (
        "DescribeEgressOnlyInternetGateways",
        "EgressOnlyInternetGateways",
        "EgressOnlyInternetGatewayIds",
    ),
}


def _gateway(r: Reader, route: dict, ctx: Context) -> None:
    """Read the gateway a route names into ``ctx.gateways`` (None: it does not exist), or say
    in ``ctx.unread`` why it could not be read. Judging it is the evaluator's part."""
    for gw in (route.get("GatewayId"), route.get("NatGatewayId"), route.get("EgressOnlyInternetGatewayId")):
        prefix = next((p for p in _GATEWAYS if gw and gw.startswith(p)), None)
        if prefix is None or gw in ctx.gateways or gw in ctx.unread:
            continue
        op, key, ids = _GATEWAYS[prefix]
        try:
            found = r.call(op, key, **{ids: [gw]})
            ctx.gateways[gw] = found[0] if found else None
        except NotFound:
            ctx.gateways[gw] = None
        except Unreadable as e:
            ctx.unread[gw] = e.reason


def _path_subnet(r: Reader, subnet: str, vpc: str | None, ctx: Context) -> Subnet:
    """A subnet the path crosses besides our own (a NAT gateway's): its ACL and route table."""
    sub = Subnet(subnet)
    sub.nacl, why = _subnet_nacl(r, subnet, vpc)
    if why:
        sub.unread["network-acl"] = why
    sub.route_table, why = _route_table(r, subnet, vpc, ctx)
    if why:
        sub.unread["route-table"] = why
    return sub


def _nat_subnets(r: Reader, src: Interface, ctx: Context) -> None:
    """For each NAT gateway our route table uses: its subnet's ACL and route table."""
    for route in (src.route_table or {}).get("Routes", []):
        nat = ctx.gateways.get(route.get("NatGatewayId") or "")
        subnet = (nat or {}).get("SubnetId")
        if subnet and subnet not in ctx.subnets:
            ctx.subnets[subnet] = _path_subnet(r, subnet, nat.get("VpcId") or src.vpc_id, ctx)


def _vpc_cidrs(r: Reader, vpc: str | None, ctx: Context) -> None:
    if not vpc:
        return
    try:
        vpcs = r.call("DescribeVpcs", "Vpcs", VpcIds=[vpc])
    except (Unreadable, NotFound):
        return
    for v in vpcs:
        ctx.vpc_cidrs += [a["CidrBlock"] for a in v.get("CidrBlockAssociationSet", [])] or [v["CidrBlock"]]
        ctx.vpc_cidrs += [a["Ipv6CidrBlock"] for a in v.get("Ipv6CidrBlockAssociationSet", [])]


def _destination(r: Reader, address: str, ctx: Context) -> Interface | None:
    """The destination's interface, when it belongs to this account."""
    want = ip_address(address)
    name = "ipv6-addresses.ipv6-address" if want.version == 6 else "addresses.private-ip-address"
    try:
        enis = r.call(
            "DescribeNetworkInterfaces", "NetworkInterfaces", Filters=[{"Name": name, "Values": [address]}]
        )
    except MissingPermission:
        return None
    except Unreadable:  # some emulators lack the IPv6 filter: look through the VPC's interfaces
        if not ctx.source.vpc_id:
            return None
        try:
            enis = r.call(
                "DescribeNetworkInterfaces",
                "NetworkInterfaces",
                Filters=[{"Name": "vpc-id", "Values": [ctx.source.vpc_id]}],
            )
        except Unreadable:
            return None
        enis = [
            e for e in enis if any(ip_address(a["Ipv6Address"]) == want for a in e.get("Ipv6Addresses", []))
        ]
    if not enis:
        return None
    iface, group_ids = _interface_from_api(enis[0])
    iface.groups = _groups(r, group_ids, ctx, "destination-security-group")
    if iface.subnet_id:
        iface.nacl, why = _subnet_nacl(r, iface.subnet_id, iface.vpc_id)
        if why:
            ctx.unchecked["destination-network-acl"] = why
    return iface


def read_context(
    who: Identity, destinations: list[str], ephemeral: tuple[int, int], reader: Reader | None = None
) -> tuple[Context, dict[str, Interface | None], Reader]:
    """Everything the evaluator needs about this host and each destination."""
    r = reader or Reader(who.region)
    unchecked: dict[str, str] = {}
    src, group_ids = _own_interface(r, who, unchecked)
    ctx = Context(provider="aws", source=src, ephemeral=ephemeral, unchecked=unchecked)
    src.groups = _groups(r, group_ids, ctx, "security-group")
    if src.subnet_id:
        src.nacl, why = _subnet_nacl(r, src.subnet_id, src.vpc_id)
        if why:
            ctx.unchecked["network-acl"] = why
        src.route_table, why = _route_table(r, src.subnet_id, src.vpc_id, ctx)
        if why:
            ctx.unchecked["route-table"] = why
        _nat_subnets(r, src, ctx)
    _vpc_cidrs(r, src.vpc_id, ctx)
    dests = {d: _destination(r, d, ctx) for d in destinations}
    return ctx, dests, r
