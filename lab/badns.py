"""A deliberately broken nameserver for the lab: it answers every query with SERVFAIL.

Usage: ``python -m lab.badns ADDRESS PORT``. Prints ``ready`` once listening.
"""

from __future__ import annotations

import socket
import sys

import dns.message
import dns.rcode


def main(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            continue
        reply = dns.message.make_response(query)
        reply.set_rcode(dns.rcode.SERVFAIL)
        sock.sendto(reply.to_wire(), peer)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
