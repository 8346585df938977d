"""The contract between sans-I/O probe machines and the drivers that run them."""

from __future__ import annotations

from typing import Protocol

from mailpath.probes import wire


class Machine(Protocol):
    """What a driver needs: packets to send, a place to feed replies, and when to wake up."""

    @property
    def done(self) -> bool: ...

    def poll(self, now: float) -> list: ...  # the Send objects due now

    def feed(self, dg: wire.Datagram, now: float) -> None: ...

    def next_wakeup(self, now: float) -> float: ...

    def send_failed(self, send, err: int, now: float) -> None: ...


class DropAware(Protocol):
    """A machine that can be told that replies were lost before it saw them.

    ``dropped(n, now, since)``: this host's kernel dropped ``n`` replies (a receive queue
    overflowed) after ``since`` (None: at some unknown time) and by ``now``. The machine
    decides what to ask again; a driver only reports. Drivers call it when the machine has it.
    """

    def dropped(self, n: int, now: float, since: float | None = None) -> None: ...


class Together:
    """Run several machines as one (e.g. traces of every address of a name, concurrently).

    Every machine sees every datagram; each accepts only replies to its own probes.
    """

    def __init__(self, machines: list[Machine]) -> None:
        self.machines = machines
        self._owner: dict[int, Machine] = {}

    @property
    def done(self) -> bool:
        return all(m.done for m in self.machines)

    def poll(self, now: float) -> list:
        self._owner.clear()  # send_failed() only ever concerns the latest poll's packets
        sends = []
        for m in self.machines:
            for s in m.poll(now):
                self._owner[id(s)] = m
                sends.append(s)
        return sends

    def feed(self, dg: wire.Datagram, now: float) -> None:
        for m in self.machines:
            m.feed(dg, now)

    def next_wakeup(self, now: float) -> float:
        return min((m.next_wakeup(now) for m in self.machines if not m.done), default=now)

    def send_failed(self, send, err: int, now: float) -> None:
        self._owner[id(send)].send_failed(send, err, now)

    def dropped(self, n: int, now: float, since: float | None = None) -> None:
        """Any machine's replies may have been among those dropped: each that can, re-asks."""
        for m in self.machines:
            report = getattr(m, "dropped", None)
            if report is not None:
                report(n, now, since)
