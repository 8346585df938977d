"""Reading a capture file for ``mailpath pcap``: scapy reads the file format (pcap or pcapng,
gzipped or not), the project's own parsers (``probes.wire``) read the packets, and
:class:`~mailpath.probes.flows.Flows` tells what happened to each connection attempt.

The file is streamed, record by record (``RawPcapReader``/``RawPcapNgReader``: no scapy
dissection, which would cost a hundred times more per packet); nothing but the attempts being
followed stays in memory. Link types: Ethernet (with VLAN tags), Linux cooked capture (SLL and
SLL2), raw IP (101, 228, 229) and BSD loopback (0, 108).

A file that is no capture, is empty, or has a link type not read here raises
:class:`~mailpath.probes.errors.InputError`. A file cut short (a record or block that ends
before its length says, as when tcpdump was killed or the copy was incomplete) is read up to
the cut and the result says where (:attr:`CaptureInfo.truncated`); the command then shows what
was read and exits 2, as ``tshark`` does.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field

from mailpath.probes import wire
from mailpath.probes.errors import InputError
from mailpath.probes.flows import DEFAULT_PORTS, Connection, Flows, Limits

LINK_TYPES = {
    0: "loopback (null)",
    1: "Ethernet",
    101: "raw IP",
    108: "loopback (OpenBSD)",
    113: "Linux cooked (SLL)",
    228: "raw IPv4",
    229: "raw IPv6",
    276: "Linux cooked (SLL2)",
}
_VLAN = (0x8100, 0x88A8, 0x9100)
_IPV4, _IPV6 = 0x0800, 0x86DD
_MTU = 65535  # what scapy's readers return of a record at most


def ip_packet(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a frame of this link type, or None (not IP, or cut inside the header)."""
    if linktype in (101, 228, 229):
        return frame
    if linktype == 1:
        if len(frame) < 14:
            return None
        kind, at = (frame[12] << 8) | frame[13], 14
        while kind in _VLAN and len(frame) >= at + 4:
            kind, at = (frame[at + 2] << 8) | frame[at + 3], at + 4
    elif linktype == 113:
        if len(frame) < 16:
            return None
        kind, at = (frame[14] << 8) | frame[15], 16
    elif linktype == 276:
        if len(frame) < 20:
            return None
        kind, at = (frame[0] << 8) | frame[1], 20
    elif linktype in (0, 108):
        return frame[4:] if len(frame) > 4 else None  # the family is in host order: the IP version tells
    else:
        return None
    return frame[at:] if kind in (_IPV4, _IPV6) else None


def datagram(packet: bytes) -> wire.Datagram | None:
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return wire.parse_ipv4(packet, verify=False)
    if version == 6:
        return wire.parse_ipv6(packet)
    return None


@dataclass
class CaptureInfo:
    """The file as read: what it is, how much of it, and what was left out."""

    path: str
    format: str  # pcap, pcapng (gzipped: +".gz")
    link_types: list[str] = field(default_factory=list)
    packets: int = 0
    ip_packets: int = 0
    first: float | None = None  # timestamps of the first and last packets, seconds since the epoch
    last: float | None = None
    ports: list[int] = field(default_factory=list)
    connections: int = 0  # attempts listed
    unlisted: dict[str, int] = field(default_factory=dict)  # verdict -> attempts past the listing limit
    evicted: int = 0  # attempts closed early: too many at once
    truncated: str | None = None  # where and how the file is cut short

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str):
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned open, closed by the caller
    except IsADirectoryError:
        raise InputError(f"{path!r} is a directory, not a capture file") from None
    except OSError as e:
        raise InputError(f"cannot read {path!r}: {e.strerror}") from None
    head = raw.read(4)
    raw.seek(0)
    if not head:
        raw.close()
        raise InputError(f"{path!r} is empty: not a capture")
    if head[:2] == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw), True
    return raw, raw, False


def _reader(path: str, stream):
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    try:
        reader = RawPcapReader(stream)
    except (Scapy_Exception, EOFError, OSError, zlib.error, struct.error):
        raise InputError(f"{path!r} is not a pcap or pcapng capture (or its header is damaged)") from None
    return reader, "pcapng" if isinstance(reader, RawPcapNgReader) else "pcap"


def read(
    path: str, ports: list[int] | tuple[int, ...] = DEFAULT_PORTS, limits: Limits | None = None
) -> tuple[list[Connection], CaptureInfo]:
    """Every attempt to ``ports`` in the capture at ``path``, and what the file was."""
    # scapy logs a warning for each damaged record; this module reports them itself
    logging.getLogger("scapy").setLevel(logging.ERROR)
    raw, stream, zipped = _open(path)
    try:
        reader, kind = _reader(path, stream)
        info = CaptureInfo(path, kind + (".gz" if zipped else ""), ports=sorted(ports))
        flows = Flows(tuple(ports), limits)
        if kind == "pcap":
            _check_link(path, reader.linktype)
            last_good = _pcap(reader, flows, info)
        else:
            last_good = _pcapng(path, reader, flows, info)
        if info.truncated is None:
            info.truncated = _tail(stream, raw, zipped, kind, last_good, getattr(reader, "endian", "<"))
        connections = flows.finish()
    finally:
        stream.close()
        raw.close()
    info.connections = len(connections)
    info.unlisted = dict(flows.unlisted)
    info.evicted = flows.evicted
    return connections, info


def _check_link(path: str, linktype: int) -> None:
    if linktype not in LINK_TYPES:
        raise InputError(
            f"{path!r}: link type {linktype} is not one mailpath reads "
            "(Ethernet, Linux cooked SLL/SLL2, raw IP, loopback)"
        )


def _pcap(reader, flows: Flows, info: CaptureInfo) -> int:
    linktype = reader.linktype
    info.link_types = [LINK_TYPES[linktype]]
    scale = 1e-9 if reader.nano else 1e-6
    feed, tell = flows.feed, reader.f.tell
    frame, first, ts, ips, last_good = 0, None, None, 0, tell()
    for data, (sec, usec, wirelen, caplen) in reader:
        frame += 1
        ts = sec + usec * scale
        if first is None:
            first = ts
        if len(data) < caplen and len(data) < _MTU:
            info.truncated = f"the file ends inside packet {frame} ({len(data)} of its {caplen} bytes)"
        else:
            last_good = tell()
        packet = ip_packet(linktype, data)
        dg = datagram(packet) if packet else None
        if dg is not None:
            ips += 1
            feed(dg, ts, frame, caplen < wirelen)
    info.packets, info.ip_packets, info.first, info.last = frame, ips, first, ts
    return last_good


def _pcapng(path: str, reader, flows: Flows, info: CaptureInfo) -> int:
    feed, tell = flows.feed, reader.f.tell
    frame, first, ts, ips, last_good = 0, None, None, 0, tell()
    seen: set[int] = set()
    for data, meta in reader:
        frame += 1
        linktype = meta.linktype
        if linktype not in seen:
            _check_link(path, linktype)
            seen.add(linktype)
            info.link_types.append(LINK_TYPES[linktype])
        ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
        if first is None:
            first = ts
        last_good = tell()
        packet = ip_packet(linktype, data)
        dg = datagram(packet) if packet else None
        if dg is not None:
            ips += 1
            feed(dg, ts, frame, len(data) < meta.wirelen)
    info.packets, info.ip_packets, info.first, info.last = frame, ips, first, ts
    return last_good


def _tail(stream, raw, zipped: bool, kind: str, last_good: int, endian: str) -> str | None:
    """Why the reader stopped before the end of the file (a cut or damaged record), or None
    when everything after the last packet is whole (pcapng: statistics blocks and the like)."""
    if zipped:
        try:
            if stream.read(1):
                return f"reading stopped at byte {stream.tell()} (uncompressed): a damaged record"
        except (EOFError, OSError, zlib.error):
            return "the compressed file is cut short"
        return None
    size = os.fstat(raw.fileno()).st_size
    if kind == "pcap":
        if last_good < size:
            return f"the file ends inside a packet record (at byte {last_good} of {size})"
        return None
    at = last_good
    raw.seek(at)
    while at < size:
        head = raw.read(8)
        if len(head) < 8:
            return f"the file ends inside a block header (at byte {at} of {size})"
        kind_, length = struct.unpack(endian + "II", head)
        if kind_ == 0x0A0D0D0A:
            return None  # a new section: scapy reads on through these; nothing was left behind
        if length < 12 or length % 4:
            return f"a damaged block at byte {at} (length {length})"
        if at + length > size:
            return f"the file ends inside a block (at byte {at}: {length} bytes, {size - at} left)"
        if kind_ in (2, 3, 6):
            return f"a packet block at byte {at} could not be read"
        raw.seek(at + length)
        at += length
    return None
