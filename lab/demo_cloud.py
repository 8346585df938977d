"""``make demo``'s EC2 world: the one :mod:`lab.world` builds (scenario ``open``), reshaped so
that the cloud explains two of the lab's blocks at once.

- The instance's security group lets out TCP to the given ports only (the demo: 25 and 587),
  so a drop of 465 is the security group's doing (``cloud-config``, naming the group).
- The network ACLs let IPv6 through both ways, as AWS's default ACL of a VPC with IPv6 does
  (moto's has IPv4 rules only), so a drop of 25 is left to what the API cannot show: the
  provider's port-25 policy (``cloud-policy``).

Run inside the client namespace, where moto listens:
``python -m lab.demo_cloud ENDPOINT SG PORT[,PORT...]``.
"""

from __future__ import annotations

import sys


def reshape(ec2, sg: str, ports: list[int]) -> None:
    egress = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]["IpPermissionsEgress"]
    if egress:
        ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=egress)
    ec2.authorize_security_group_egress(
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
            }
            for port in ports
        ],
    )
    for acl in ec2.describe_network_acls()["NetworkAcls"]:
        have = {(e["Egress"], e.get("Ipv6CidrBlock")) for e in acl["Entries"]}
        for out in (True, False):
            if (out, "::/0") not in have:
                ec2.create_network_acl_entry(
                    NetworkAclId=acl["NetworkAclId"],
                    RuleNumber=101,
                    Protocol="-1",
                    RuleAction="allow",
                    Egress=out,
                    Ipv6CidrBlock="::/0",
                )


def main(endpoint: str, sg: str, ports: str) -> None:
    import boto3

    ec2 = boto3.client(
        "ec2",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    reshape(ec2, sg, [int(p) for p in ports.split(",")])


if __name__ == "__main__":
    main(*sys.argv[1:4])
