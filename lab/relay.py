"""Reach a service inside a lab namespace from the host's loopback: ``make demo`` leaves the
dashboard of the collector (which runs in the client namespace, beside the agent) open on
http://127.0.0.1:PORT for a browser on the host.

The relay listens on the host's 127.0.0.1 only. For each connection it opens the inner one
from a thread that has joined the namespace with setns(2) (a network namespace belongs to a
thread, and a socket keeps the namespace it was made in), then copies bytes both ways.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def connect_in(namespace: str, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP connection made inside the named network namespace (``ip netns`` name)."""
    result: dict = {}

    def inside() -> None:
        try:
            fd = os.open(Path("/run/netns") / namespace, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
            finally:
                os.close(fd)
            result["sock"] = socket.create_connection(address, timeout=timeout)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=inside, name=f"netns-{namespace}")
    t.start()  # the thread ends after connecting: its namespace goes with it, the socket stays
    t.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        a.close()
        b.close()


class Relay:
    """127.0.0.1:``port`` on the host → ``address`` in ``namespace``; ``close()`` stops it."""

    def __init__(self, namespace: str, address: tuple[str, int], port: int = 0) -> None:
        self.namespace, self.address = namespace, address
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                inner = connect_in(self.namespace, self.address)
            except OSError:
                client.close()
                continue
            inner.settimeout(None)
            threading.Thread(target=_pipe, args=(client, inner), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
