"""An AWS world in moto for the cloud tests: a VPC, a subnet routed to an internet gateway (or,
``via="nat"``, a private subnet routed to a NAT gateway in a public subnet, and IPv6 to an
egress-only internet gateway), and an instance whose security group allows only what a test
says.

Also runnable inside a lab namespace, where the test process cannot reach moto's loopback:
``python -m lab.world ENDPOINT [open|no-25]`` builds a world and prints its ids and
the IMDS paths that describe its instance, as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass


@dataclass
class World:
    """One VPC (10.0.0.0/16 + IPv6), a subnet with a route table to an internet gateway, and an
    instance whose security group allows only what a test says."""

    ec2: object
    vpc: str
    subnet: str
    igw: str
    rtb: str
    sg: str
    instance: str
    eni: str
    private_ip: str
    ipv6: str | None = None
    # via="nat": the NAT gateway, its (public) subnet and that subnet's route table, and the
    # egress-only internet gateway the instance's IPv6 goes to
    nat: str | None = None
    nat_subnet: str | None = None
    nat_rtb: str | None = None
    eigw: str | None = None

    @classmethod
    def build(
        cls, ec2, *, egress: list[dict] | None = None, public_ip: bool = True, via: str = "igw"
    ) -> World:
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
        vpc_id = vpc["VpcId"]
        v6block = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["Ipv6CidrBlockAssociationSet"][0][
            "Ipv6CidrBlock"
        ]
        subnet = ec2.create_subnet(
            VpcId=vpc_id, CidrBlock="10.0.1.0/24", Ipv6CidrBlock=v6block.replace("/56", "/64")
        )["Subnet"]["SubnetId"]
        igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
        rtb = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=rtb, SubnetId=subnet)
        nat = nat_subnet = nat_rtb = eigw = None
        if via == "nat":  # the instance's subnet is private: out through a NAT gateway
            nat_subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
            nat_rtb = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
            ec2.associate_route_table(RouteTableId=nat_rtb, SubnetId=nat_subnet)
            ec2.create_route(RouteTableId=nat_rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
            alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
            nat = ec2.create_nat_gateway(SubnetId=nat_subnet, AllocationId=alloc)["NatGateway"][
                "NatGatewayId"
            ]
            eigw = ec2.create_egress_only_internet_gateway(VpcId=vpc_id)["EgressOnlyInternetGateway"][
                "EgressOnlyInternetGatewayId"
            ]
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
            ec2.create_route(
                RouteTableId=rtb, DestinationIpv6CidrBlock="::/0", EgressOnlyInternetGatewayId=eigw
            )
        else:
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
            ec2.create_route(RouteTableId=rtb, DestinationIpv6CidrBlock="::/0", GatewayId=igw)
        sg = ec2.create_security_group(GroupName="mail", Description="mail", VpcId=vpc_id)["GroupId"]
        default = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]["IpPermissionsEgress"]
        if default:
            ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=default)
        if egress is None:
            egress = [
                {
                    "IpProtocol": "-1",
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                    "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
                }
            ]
        if egress:
            ec2.authorize_security_group_egress(GroupId=sg, IpPermissions=egress)
        inst = ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            SecurityGroupIds=[sg],
            Ipv6AddressCount=1,
        )["Instances"][0]
        eni = inst["NetworkInterfaces"][0]
        if public_ip:
            alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
            ec2.associate_address(AllocationId=alloc, NetworkInterfaceId=eni["NetworkInterfaceId"])
        v6 = [a["Ipv6Address"] for a in eni.get("Ipv6Addresses", [])]
        return cls(
            ec2,
            vpc_id,
            subnet,
            igw,
            rtb,
            sg,
            inst["InstanceId"],
            eni["NetworkInterfaceId"],
            inst["PrivateIpAddress"],
            v6[0] if v6 else None,
            nat,
            nat_subnet,
            nat_rtb,
            eigw,
        )

    def custom_acl(self, entries: list[tuple], subnet: str | None = None) -> str:
        """Put the subnet (default: the instance's) behind a new ACL with (number, egress,
        action, protocol, cidr, ports) rules."""
        ec2 = self.ec2
        subnet = subnet or self.subnet
        acl = ec2.create_network_acl(VpcId=self.vpc)["NetworkAcl"]["NetworkAclId"]
        for number, egress, action, proto, cidr, ports in entries:
            kwargs = {"Ipv6CidrBlock" if ":" in cidr else "CidrBlock": cidr}
            if ports:
                kwargs["PortRange"] = {"From": ports[0], "To": ports[1]}
            ec2.create_network_acl_entry(
                NetworkAclId=acl,
                RuleNumber=number,
                Protocol=proto,
                RuleAction=action,
                Egress=egress,
                **kwargs,
            )
        assoc = ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
        current = next(
            a["NetworkAclAssociationId"]
            for a in assoc["NetworkAcls"][0]["Associations"]
            if a["SubnetId"] == subnet
        )
        ec2.replace_network_acl_association(AssociationId=current, NetworkAclId=acl)
        return acl

    def imds_paths(self) -> dict[str, str]:
        """What IMDS would answer on this instance."""
        eni = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[self.eni])["NetworkInterfaces"][0]
        mac = eni.get("MacAddress") or "0e:00:00:00:00:01"
        base = f"meta-data/network/interfaces/macs/{mac}/"
        return {
            "meta-data/instance-id": self.instance,
            "meta-data/mac": mac,
            "meta-data/placement/region": self.ec2.meta.region_name,
            base + "interface-id": self.eni,
            base + "subnet-id": self.subnet,
            base + "vpc-id": self.vpc,
            base + "security-group-ids": self.sg,
            base + "local-ipv4s": self.private_ip,
            "dynamic/instance-identity/document": json.dumps(
                {"instanceId": self.instance, "region": self.ec2.meta.region_name}
            ),
        }


def main(endpoint: str, scenario: str) -> None:
    import boto3

    ec2 = boto3.client(
        "ec2",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    egress = None
    if scenario == "no-25":
        egress = [
            {"IpProtocol": "tcp", "FromPort": 587, "ToPort": 587, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ]
    w = World.build(ec2, egress=egress)
    print(json.dumps({"instance": w.instance, "sg": w.sg, "eni": w.eni, "imds": w.imds_paths()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
