"""The connect() fallback's pure part: reading the kernel's queued ICMP errors."""

from __future__ import annotations

import socket
import struct
import sys

from hypothesis import given
from hypothesis import strategies as st
from mailpath.probes.connect import QueuedICMP, parse_extended_error


def _sockaddr(address: str) -> bytes:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    head = fam.to_bytes(2, sys.byteorder) + b"\0\0"
    if fam == socket.AF_INET:
        return head + socket.inet_pton(fam, address) + bytes(8)
    return head + bytes(4) + socket.inet_pton(fam, address) + bytes(4)


def _ee(origin: int, icmp_type: int, code: int, offender: str) -> bytes:
    return struct.pack("=IBBBBII", 13, origin, icmp_type, code, 0, 0, 0) + _sockaddr(offender)


def test_icmp_and_icmp6_errors():
    assert parse_extended_error(_ee(2, 3, 13, "198.18.1.2")) == QueuedICMP("198.18.1.2", 3, 13)
    assert parse_extended_error(_ee(3, 1, 1, "2001:db8:1::2")) == QueuedICMP("2001:db8:1::2", 1, 1)


def test_non_icmp_origins_are_ignored():
    assert parse_extended_error(_ee(1, 0, 0, "198.18.1.2")) is None  # SO_EE_ORIGIN_LOCAL


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data):
    parse_extended_error(data)
