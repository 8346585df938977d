"""A plain TCP listener for the lab's open ports: accept, then close. Prints ``ready``.

Usage: ``python -m lab.listen 25,465,587`` (IPv4 and IPv6 on every port).
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(spec: str) -> None:
    sel = selectors.DefaultSelector()
    for port in (int(p) for p in spec.split(",") if p):
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            s.listen(1024)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            try:
                conn, _ = key.fileobj.accept()
                conn.close()
            except OSError:
                pass


if __name__ == "__main__":
    main(sys.argv[1])
