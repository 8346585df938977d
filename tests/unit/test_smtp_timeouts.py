"""SMTP stage timeouts against a starved event loop: the server had ``--timeout`` to answer.

A loopback server in its own thread answers every line at once; the client's event loop is
blocked by CPU work over and over (what many sessions at once on a busy host do to it). No
stage may time out because the loop could not look; a server that really says nothing still
times out, and an idle loop times out on time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager, suppress

from mailpath.probes.smtp import SmtpOptions, check_address


def _serve(conn: socket.socket, greet: bool) -> None:
    with conn, suppress(OSError):
        if not greet:
            conn.recv(1024)  # until the client gives up
            return
        conn.sendall(b"220 loopback ESMTP\r\n")
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                verb = line.split(b" ")[0].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-loopback\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")


@contextmanager
def server(greet: bool = True):
    """An SMTP server on 127.0.0.1 that answers at once, whatever the client's loop does."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=128)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            threading.Thread(target=_serve, args=(conn, greet), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        lsock.close()


async def _hog(block: float, gap: float, until: float) -> None:
    """Block the event loop for ``block`` seconds at a time (CPU work, no awaiting), leaving
    it ``gap`` seconds in between, until ``until``."""
    while time.monotonic() < until:
        end = time.monotonic() + block
        while time.monotonic() < end:
            pass
        await asyncio.sleep(gap)


async def _checks(port: int, n: int, timeout: float, block: float, span: float, gap: float = 0.02):
    opts = SmtpOptions(tls="none", timeout=timeout)
    hog = asyncio.ensure_future(_hog(block, gap, time.monotonic() + span))
    await asyncio.sleep(0)
    start = time.monotonic()
    results = await asyncio.gather(*(check_address("127.0.0.1", "127.0.0.1", port, opts) for _ in range(n)))
    elapsed = time.monotonic() - start
    hog.cancel()
    return results, elapsed


def test_a_starved_loop_does_not_make_a_prompt_server_time_out():
    """The loop is blocked 0.3 s at a time, free 20 ms in between: most stage deadlines
    (0.2 s) fall while it is blocked, with the server's answer waiting unread."""
    with server() as port:
        results, _ = asyncio.run(_checks(port, n=20, timeout=0.2, block=0.3, span=30))
    for r in results:
        assert [p.code for p in r.problems] == [], [(s.name, s.ok, s.ms, s.detail) for s in r.stages]
        assert [s.name for s in r.stages] == ["connect", "greeting", "ehlo", "quit"]
        assert all(s.ok for s in r.stages)


def test_a_silent_server_still_times_out_on_a_starved_loop():
    """Blocked half the time: the greeting's wait takes well over its timeout (up to about
    twice: the 20 ms heartbeat that measures the starvation can miss up to a beat of each
    0.1 s block, so at least 1.6 times), and the check ends while the loop is still starved
    (for 30 s)."""
    with server(greet=False) as port:
        results, elapsed = asyncio.run(_checks(port, n=5, timeout=0.3, block=0.1, gap=0.1, span=30))
    for r in results:
        assert [p.code for p in r.problems] == ["no-greeting"]
    assert 1.4 * 0.3 <= elapsed < 5


def test_an_idle_loop_times_out_on_time():
    with server(greet=False) as port:
        results, elapsed = asyncio.run(_checks(port, n=1, timeout=0.3, block=0.0, span=0))
    assert [p.code for p in results[0].problems] == ["no-greeting"]
    # the greeting's timeout, then whether the port speaks TLS: this server closes on the
    # ClientHello, so that takes no timeout (the TLS contexts are made once, not per check)
    assert 0.3 <= elapsed < 0.3 + 0.2
