"""CAP_NET_RAW from the permitted set into the effective one, for the calling thread.

A process that runs as an ordinary user gets CAP_NET_RAW in one of two ways:

- systemd's ``AmbientCapabilities=CAP_NET_RAW`` (or ``setpriv --ambient-caps``): it is
  effective already and nothing here is needed;
- a file capability on the interpreter, ``setcap cap_net_raw+p``, as the container image does.
  Without the effective bit (``+ep``) the kernel does not raise it on exec, and that is on
  purpose: with ``+ep``, exec *fails* (EPERM) wherever the bounding set lacks the capability,
  so one image could not also run the collector, which drops every capability. With ``+p`` the
  capability is only permitted, and :func:`raise_net_raw` makes it effective when a raw socket
  is about to be opened.

Capabilities belong to threads on Linux, so this is called in the thread that opens the
sockets. It never fails: without the capability the socket calls fail as they would have, and
the probes fall back to ``connect()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

CAP_NET_RAW = 13
_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = None


def _load():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def raise_net_raw() -> bool:
    """Make CAP_NET_RAW effective in this thread if it is permitted: whether it is effective now."""
    try:
        libc = _load()
        header = _Header(_VERSION_3, 0)
        data = (_Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            return False
        bit = 1 << CAP_NET_RAW
        if data[0].effective & bit:
            return True
        if not data[0].permitted & bit:
            return False
        data[0].effective |= bit
        return libc.capset(ctypes.byref(header), data) == 0
    except (OSError, AttributeError):  # not Linux, or no capget in this libc
        return False
