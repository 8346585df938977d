"""A hostile middlebox for the lab: it sees each SYN and answers with near-miss forgeries.

Run inside a router namespace: ``python -m tests.lab.spoofer IFACE``. Every forgery is
wrong in one way a strict prober must notice: ack off by one, a bad checksum, an ICMP
error quoting the wrong sequence number, an ICMP error quoting another host's packet.
Prints ``ready`` once sniffing, then the number of SYNs it answered when stopped.
"""

from __future__ import annotations

import signal
import sys

from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.sendrecv import AsyncSniffer, send

conf.verb = 0
seen = 0


def forge(pkt) -> None:
    global seen
    v6 = IPv6 in pkt
    ip = pkt[IPv6] if v6 else pkt[IP]
    tcp = pkt[TCP]
    if str(tcp.flags) != "S":
        return
    seen += 1
    L3 = IPv6 if v6 else IP
    back = dict(src=ip.dst, dst=ip.src)
    forgeries = [
        L3(**back) / TCP(sport=tcp.dport, dport=tcp.sport, ack=tcp.seq + 2, flags="RA"),
        L3(**back) / TCP(sport=tcp.dport, dport=tcp.sport, seq=7, ack=tcp.seq, flags="SA"),
        L3(**back) / TCP(sport=tcp.dport, dport=tcp.sport, seq=7, ack=tcp.seq + 1, flags="SA", chksum=0x1234),
    ]
    wrong_seq = ip.copy()
    wrong_seq[TCP].seq = tcp.seq + 1
    someone_else = ip.copy()
    someone_else.src = "2001:db8:1::99" if v6 else "198.18.1.99"
    me = "2001:db8:1::2" if v6 else "198.18.1.2"
    for quoted in (wrong_seq, someone_else):
        del quoted[TCP].chksum
        error = ICMPv6DestUnreach(code=1) if v6 else ICMP(type=3, code=13)
        forgeries.append(L3(src=me, dst=ip.src) / error / bytes(quoted)[: 1200 if v6 else 28])
    for f in forgeries:
        send(f)


def main(iface: str) -> None:
    sniffer = AsyncSniffer(
        iface=iface, prn=forge, store=False, lfilter=lambda p: TCP in p and (IP in p or IPv6 in p)
    )
    sniffer.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (sniffer.stop(), print(seen, flush=True), sys.exit(0)))
    signal.pause()


if __name__ == "__main__":
    main(sys.argv[1])
