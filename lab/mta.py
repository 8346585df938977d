"""A real MTA in the lab: Exim (Debian's ``exim4-daemon-light``), nobody here wrote it.

``serve_exim`` writes a configuration of its own under the lab's work directory (nothing in
/etc is read or changed: ``-C`` as root), and runs ``exim -bdf`` in the server namespace,
bound only to the addresses it is given:

- 25: STARTTLS; AUTH offered only after TLS (``auth_advertise_hosts``).
- 587: the same, for submission: STARTTLS, then AUTH PLAIN and LOGIN.
- 465: implicit TLS (``tls_on_connect_ports``), AUTH at once.
- RCPT: an authenticated client may relay anywhere; otherwise only lab.test is accepted
  (Exim's stock ``relay not permitted``), and a local part there must route: every one
  does except ``nobody`` (Exim's own ``Unrouteable address``).
- DATA is refused before any message is taken (mailpath never sends it); nothing is ever
  delivered, no queue runner runs, and nothing is looked up in the DNS.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from lab.network import Lab

PORTS = (25, 465, 587)
EXIM_USER = "Debian-exim"  # the Debian package's own user, the one Exim drops privilege to


def exim_binary() -> str:
    path = shutil.which("exim4") or shutil.which("exim", path="/usr/sbin:/usr/bin:/sbin")
    if not path:
        raise RuntimeError("exim not found: install exim4-daemon-light (make deps does)")
    return path


def _quote(value: str) -> str:
    """A literal inside an Exim string expansion."""
    return "".join("\\" + c if c in "\\${}" else c for c in value)


def exim_config(
    *,
    name: str,
    address4: str,
    address6: str,
    directory: Path,
    cert: Path,
    key: Path,
    user: str,
    password: str,
    local_domains: tuple[str, ...] = ("lab.test",),
) -> str:
    u, p = _quote(user), _quote(password)
    return f"""\
# Written by lab/mta.py for one lab run; started as exim -C <this file> -bdf.
primary_hostname = {name}
domainlist local_domains = {" : ".join(local_domains)} : {name}

local_interfaces = <; {address4} ; {address6}
daemon_smtp_ports = {" : ".join(str(port) for port in PORTS)}
tls_on_connect_ports = 465

spool_directory = {directory}/spool
log_file_path = {directory}/log/%slog
pid_file_path = {directory}/exim.pid
log_selector = +smtp_connection +tls_peerdn

# Nothing is looked up: no reverse DNS, no ident, no DNS-based check in any ACL.
keep_environment =
host_lookup =
rfc1413_hosts =
rfc1413_query_timeout = 0s

tls_advertise_hosts = *
tls_certificate = {cert}
tls_privatekey = {key}
auth_advertise_hosts = ${{if eq{{$tls_in_cipher}}{{}}{{}}{{*}}}}

queue_only = true
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_predata = acl_no_data

begin acl

acl_check_rcpt:
  accept  authenticated = *
  require message = relay not permitted
          domains = +local_domains
  require verify = recipient
  accept

acl_no_data:
  deny    message = this lab server takes no messages

begin routers

local_user:
  driver = accept
  domains = +local_domains
  local_parts = ! nobody
  transport = nowhere

begin transports

nowhere:
  driver = appendfile
  file = /dev/null

begin authenticators

PLAIN:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if and{{{{eq{{$auth2}}{{{u}}}}}{{eq{{$auth3}}{{{p}}}}}}}}}
  server_set_id = $auth2

LOGIN:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_condition = ${{if and{{{{eq{{$auth1}}{{{u}}}}}{{eq{{$auth2}}{{{p}}}}}}}}}
  server_set_id = $auth1
"""


def serve_exim(
    lab: Lab,
    workdir: Path,
    *,
    name: str,
    address4: str,
    address6: str,
    cert_prefix: Path,
    user: str,
    password: str,
    timeout: float = 10.0,
) -> subprocess.Popen:
    """Run Exim in the server namespace on ``address4``/``address6``, ports 25, 465 and 587;
    return once it listens on all six (it is stopped with the lab)."""
    exim = exim_binary()
    directory = workdir / "exim"
    for sub in ("spool", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "cert.key"
    shutil.copyfile(f"{cert_prefix}.pem", cert)
    shutil.copyfile(f"{cert_prefix}.key", key)
    os.chmod(key, 0o600)
    config = directory / "exim.conf"
    config.write_text(
        exim_config(
            name=name,
            address4=address4,
            address6=address6,
            directory=directory,
            cert=cert,
            key=key,
            user=user,
            password=password,
        )
    )
    os.chmod(config, 0o600)  # it holds the password; Exim reads it as root
    # Exim gives up root for each connection: its user must reach the spool, the log and the
    # key, and only that user (the work directory is otherwise root's alone).
    exim_user = pwd.getpwnam(EXIM_USER)
    for path in (directory, directory / "spool", directory / "log", cert, key):
        os.chown(path, exim_user.pw_uid, exim_user.pw_gid)
    os.chmod(directory, 0o750)
    os.chmod(workdir, os.stat(workdir).st_mode | 0o001)  # traverse only, no listing
    errors = (directory / "stderr").open("wb")
    proc = lab.popen(
        "server",
        [exim, "-C", str(config), "-bdf"],
        stdin=subprocess.DEVNULL,
        stdout=errors,
        stderr=errors,
    )
    errors.close()
    want = {f"{address4}:{port}" for port in PORTS} | {f"[{address6}]:{port}" for port in PORTS}
    deadline = time.monotonic() + timeout
    while True:
        listening = set(lab.exec("server", ["ss", "-Hltn"]).stdout.split())
        if want <= listening:
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()  # not left for the lab's teardown: a failed setup stops it at once
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            why = (directory / "stderr").read_text(errors="replace").strip()
            log = directory / "log" / "paniclog"
            if log.exists() and (panic := log.read_text(errors="replace").strip()) not in why:
                why += "\n" + panic
            raise RuntimeError(f"exim did not start: {why or 'no output'}")
        time.sleep(0.05)
