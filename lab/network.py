"""A routed lab network of Linux network namespaces: client — r1 — r2 — server.

Every test that sends packets, every benchmark and ``make demo`` run inside one of these.
Addresses come from 198.18.0.0/15 and 2001:db8::/32 only, and the client namespace has no
link to the host's own namespace, so nothing sent in a lab can leave the machine.

Names derive from a prefix, so two labs never collide; veth pairs are created directly
inside their namespaces (``ip -n A link add ... peer ... netns B``), so no interface name
ever exists in the host namespace. ``down()`` kills every process in the lab's namespaces
and deletes them; it runs on context exit, at interpreter exit, and on SIGTERM.

Kernel defaults stay on (ICMP rate limits included): real routers rate-limit too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# iptables REJECT flavours, by the name the lab uses -> (IPv4 option, IPv6 option)
REJECTS = {
    "tcp-reset": ("tcp-reset", "tcp-reset"),
    "port-unreachable": ("icmp-port-unreachable", "icmp6-port-unreachable"),
    "admin-prohibited": ("icmp-admin-prohibited", "icmp6-adm-prohibited"),
    "host-prohibited": ("icmp-host-prohibited", "icmp6-adm-prohibited"),
    "net-prohibited": ("icmp-net-prohibited", "icmp6-adm-prohibited"),
    "host-unreachable": ("icmp-host-unreachable", "icmp6-addr-unreachable"),
    "net-unreachable": ("icmp-net-unreachable", "icmp6-no-route"),
    "proto-unreachable": ("icmp-proto-unreachable", "icmp6-port-unreachable"),
}
ACTIONS = ("drop", *REJECTS)
ROUTE_TYPES = ("unreachable", "prohibit", "blackhole")
NODES = ("client", "r1", "r2", "server")
# Each running lab registers its prefix and pid here, so sweep() removes only the namespaces of
# this project's own runs that died, never another lab's nor anything else named alike.
REGISTRY = Path("/run/mailpath-lab")


@dataclass(frozen=True)
class Link:
    """One point-to-point segment: subnet number ``n`` gives 198.18.n.0/24 and 2001:db8:n::/64."""

    a: str
    b: str
    n: int

    def addr(self, node: str, family: int) -> str:
        host = 1 if node == self.a else 2
        return f"198.18.{self.n}.{host}" if family == 4 else f"2001:db8:{self.n}::{host}"


LINKS = (Link("client", "r1", 1), Link("r1", "r2", 2), Link("r2", "server", 3))


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, input=input)


@dataclass(eq=False)
class Lab:
    """The lab topology. Hops seen from the client: r1 = 1, r2 = 2, server = 3."""

    prefix: str = field(default_factory=lambda: f"mp{secrets.token_hex(3)}")
    hosts: dict[str, list[str]] = field(default_factory=dict)  # /etc/hosts lines for the client
    _procs: list[subprocess.Popen] = field(default_factory=list, init=False)
    _up: bool = field(default=False, init=False)
    _table: int = field(default=100, init=False)
    _undo: list[tuple[str, str]] = field(default_factory=list, init=False)
    _on_down: list = field(default_factory=list, init=False)

    # -- names and addresses -------------------------------------------------------------

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def addr(self, node: str, family: int = 4, *, towards: str | None = None) -> str:
        """Address of ``node``; for routers, the one on the link towards ``towards``
        (default: the client side, the source of the ICMP errors the client sees)."""
        links = [ln for ln in LINKS if node in (ln.a, ln.b)]
        if towards is not None:
            links = [ln for ln in links if towards in (ln.a, ln.b)] or links
        return links[0].addr(node, family)

    @property
    def server4(self) -> str:
        return self.addr("server", 4)

    @property
    def server6(self) -> str:
        return self.addr("server", 6)

    def hop(self, node: str) -> int:
        """Hop number of ``node`` as seen from the client (DESIGN.md numbering)."""
        return NODES.index(node)

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        if os.geteuid() != 0:
            raise PermissionError("the lab needs root (network namespaces, iptables)")
        atexit.register(self.down)
        _install_sigterm_cleanup()
        _LIVE.add(self)
        self._up = True
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / self.prefix).write_text(f"{os.getpid()}\n")
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for node in NODES:
            _run(["ip", "netns", "add", self.ns(node)])
            self.sh(node, "ip link set lo up")
            forward = "1" if node.startswith("r") else "0"
            self.sysctl(node, "net.ipv4.ip_forward", forward)
            self.sysctl(node, "net.ipv6.conf.all.forwarding", forward)
            self.sysctl(node, "net.ipv6.conf.default.accept_dad", "0")
        for ln in LINKS:
            _run(
                [
                    "ip",
                    "-n",
                    self.ns(ln.a),
                    "link",
                    "add",
                    ln.b,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    ln.a,
                    "netns",
                    self.ns(ln.b),
                ]
            )
            for node, ifname in ((ln.a, ln.b), (ln.b, ln.a)):
                self.sh(node, f"ip addr add {ln.addr(node, 4)}/24 dev {ifname}")
                self.sh(node, f"ip -6 addr add {ln.addr(node, 6)}/64 dev {ifname} nodad")
                self.sh(node, f"ip link set {ifname} up")
        # client and server: default routes; routers: routes to the far subnets
        for fam in (4, 6):
            ip = "ip" if fam == 4 else "ip -6"
            self.sh("client", f"{ip} route add default via {LINKS[0].addr('r1', fam)}")
            self.sh("server", f"{ip} route add default via {LINKS[2].addr('r2', fam)}")
            self.sh("r1", f"{ip} route add {_net(LINKS[2], fam)} via {LINKS[1].addr('r2', fam)}")
            self.sh("r2", f"{ip} route add {_net(LINKS[0], fam)} via {LINKS[1].addr('r1', fam)}")
        self._write_hosts()
        self._wait_connected()

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{a} {name}" for name, addrs in self.hosts.items() for a in addrs]
        d = Path("/etc/netns") / self.ns("client")
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def add_host(self, name: str, *addresses: str) -> None:
        """Make ``name`` resolve to ``addresses`` inside the client namespace (/etc/hosts)."""
        self.hosts[name] = list(addresses)
        if self._up:
            self._write_hosts()

    def _wait_connected(self, timeout: float = 5.0) -> None:
        """Resolve neighbours along the path both ways (IPv4 and IPv6) before tests start."""
        deadline = time.monotonic() + timeout
        for target in (self.server4, self.server6):
            while True:
                r = self.exec("client", ["ping", "-c1", "-W1", "-n", target], check=False)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab {self.prefix}: {target} unreachable: {r.stdout}{r.stderr}")
                time.sleep(0.1)

    def down(self) -> None:
        if not self._up:
            return
        self._up = False
        _LIVE.discard(self)
        for p in self._procs:
            _stop(p)
        self._procs.clear()
        for fn in self._on_down:
            fn()
        self._on_down.clear()
        for node in NODES:
            _delete_ns(self.ns(node))
        (REGISTRY / self.prefix).unlink(missing_ok=True)

    # -- running things ------------------------------------------------------------------

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def sh(self, node: str, command: str) -> None:
        """Run one configuration command in ``node``; failures raise with the command's stderr."""
        r = _run(["ip", "netns", "exec", self.ns(node), *command.split()], check=False)
        if r.returncode:
            raise RuntimeError(f"{node}: {command}: {r.stderr.strip()}")

    def sysctl(self, node: str, key: str, value: str) -> None:
        self.sh(node, f"sysctl -q -w {key}={value}")

    def popen(self, node: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a long-running process in ``node``; it is stopped by ``down()``."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv], **kw)
        self._procs.append(p)
        return p

    # -- faults --------------------------------------------------------------------------

    def block(self, node: str, ports: str | int, action: str, *, family: int | None = None) -> None:
        """Make ``node`` apply ``action`` (``drop`` or a REJECTS flavour) to TCP SYNs for
        ``ports`` (``25`` or ``"30000:30099"``): on routers in FORWARD, on the server in INPUT."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        chain = "INPUT" if node in ("server", "client") else "FORWARD"
        for fam in (4, 6) if family is None else (family,):
            tool = "iptables" if fam == 4 else "ip6tables"
            target = "DROP" if action == "drop" else f"REJECT --reject-with {REJECTS[action][fam == 6]}"
            self.sh(node, f"{tool} -A {chain} -p tcp --syn --dport {ports} -j {target}")

    def route(
        self, node: str, kind: str, *, dest: str | None = None, port: int | None = None, family: int = 4
    ) -> None:
        """Add an ``unreachable``/``prohibit``/``blackhole`` route on ``node``: for ``dest``
        (a prefix), or for TCP to ``port`` through a policy rule and a table of its own."""
        if kind not in ROUTE_TYPES:
            raise ValueError(f"unknown route type {kind!r}; one of {', '.join(ROUTE_TYPES)}")
        ip = "ip" if family == 4 else "ip -6"
        if dest is not None:
            self.sh(node, f"{ip} route add {kind} {dest}")
            self._undo.append((node, f"{ip} route del {kind} {dest}"))
            return
        self._table += 1
        self.sh(node, f"{ip} rule add ipproto tcp dport {port} table {self._table}")
        self.sh(node, f"{ip} route add {kind} default table {self._table}")
        self._undo.append((node, f"{ip} rule del table {self._table}"))
        self._undo.append((node, f"{ip} route flush table {self._table}"))

    def reset_faults(self) -> None:
        """Remove every firewall rule and route that block() and route() added."""
        for node in NODES:
            for tool in ("iptables", "ip6tables"):
                self.sh(node, f"{tool} -F")
        for node, command in reversed(self._undo):
            self.sh(node, command)
        self._undo.clear()

    # -- services ------------------------------------------------------------------------

    def on_down(self, fn) -> None:
        """Call ``fn`` when the lab is torn down (after its processes are stopped)."""
        self._on_down.append(fn)

    def add_address(self, node: str, *addresses: str) -> None:
        """Give ``node`` more addresses on its link (e.g. one per lab service)."""
        ifname = next(ln.a if ln.b == node else ln.b for ln in LINKS if node in (ln.a, ln.b))
        for a in addresses:
            if ":" in a:
                self.sh(node, f"ip -6 addr add {a}/64 dev {ifname} nodad")
            else:
                self.sh(node, f"ip addr add {a}/24 dev {ifname}")

    def _ready(self, node: str, argv: Sequence[str]) -> subprocess.Popen:
        p = self.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{node}: {' '.join(argv)} did not start")
        return p

    def serve_dns(self, config: Sequence[str], address4: str, address6: str, workdir: Path) -> None:
        """Run dnsmasq in the server namespace on ``address4``/``address6`` with the given
        config lines (``mx-host=...``, ``host-record=...``), and make it the client's resolver."""
        conf = workdir / "dnsmasq.conf"
        conf.write_text(
            "\n".join(
                [
                    "no-resolv",
                    "no-hosts",
                    "bind-interfaces",
                    f"listen-address={address4}",
                    f"listen-address={address6}",
                    "user=root",
                    *config,
                ]
            )
            + "\n"
        )
        self.popen(
            "server",
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--pid-file="],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ready("server", [sys.executable, "-m", "lab.badns", address4, "5300"])
        d = Path("/etc/netns") / self.ns("client")
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {address4}\nnameserver {address6}\noptions timeout:2\n")
        deadline = time.monotonic() + 5
        while self.exec("client", ["getent", "hosts", "dns-ready.lab.test"], check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"lab {self.prefix}: dnsmasq did not answer")
            time.sleep(0.1)

    def serve_smtp(self, services: list[dict], workdir: Path) -> subprocess.Popen:
        """Run the lab's SMTP services (see ``lab.smtpd``) in the server namespace."""
        import json

        spec = workdir / "smtpd.json"
        spec.write_text(json.dumps(services))
        return self._ready("server", [sys.executable, "-m", "lab.smtpd", str(spec)])

    def listen(self, ports: Sequence[int], node: str = "server") -> subprocess.Popen:
        """Accept TCP on ``ports`` (IPv4 and IPv6) in ``node`` until the lab goes down."""
        spec = ",".join(str(p) for p in ports)
        return self._ready(node, [sys.executable, "-m", "lab.listen", spec])


def _net(link: Link, family: int) -> str:
    return f"198.18.{link.n}.0/24" if family == 4 else f"2001:db8:{link.n}::/64"


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


_LIVE: set[Lab] = set()
_SIGTERM_INSTALLED = False


def _install_sigterm_cleanup() -> None:
    """On SIGTERM (CI timeout, ^C of make), tear every live lab down before exiting."""
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED:
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        for lab in list(_LIVE):
            lab.down()
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
        _SIGTERM_INSTALLED = True
    except ValueError:  # not the main thread
        pass


def sweep() -> list[str]:
    """Delete the namespaces of this project's lab runs that died without cleaning up: those
    registered in REGISTRY whose process is gone. Returns the namespaces removed."""
    names = {line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line}
    removed = []
    for entry in REGISTRY.glob("mp*") if REGISTRY.is_dir() else []:
        try:
            os.kill(int(entry.read_text().split()[0]), 0)
            continue  # its run is still alive: not ours to remove
        except (ProcessLookupError, ValueError, IndexError):
            pass
        except PermissionError:
            continue
        for ns in (f"{entry.name}-{node}" for node in NODES):
            if ns in names:
                _delete_ns(ns)
                removed.append(ns)
        entry.unlink(missing_ok=True)
    return removed


def _delete_ns(ns: str) -> None:
    """Kill whatever still runs in ``ns``, then delete it (its veth ends go with it)."""
    for pid in _run(["ip", "netns", "pids", ns], check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
