"""`mailpath diagnose` in the lab: one test per cause, the cloud ones with moto and a test
IMDSv2 running inside the client namespace (the only loopback the client can reach)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import MAILPATH, Run

pytestmark = pytest.mark.lab

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "agent" / "schema" / "finding-v1.json").read_text()
)


@pytest.fixture(scope="module")
def mail():
    from lab import Lab
    from lab.mail import setup_mail

    with Lab() as lab:
        yield setup_mail(lab)


@pytest.fixture
def world(mail):
    yield mail
    mail.lab.reset_faults()


def diagnose(mail, *args: str, env: dict | None = None) -> tuple[Run, list[dict]]:
    r = mail.lab.exec(
        "client",
        [
            MAILPATH,
            "diagnose",
            *args,
            "--ca-file",
            str(mail.ca_file),
            "--smtp-timeout",
            "2",
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--json",
        ],
        check=False,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    run = Run(r.returncode, r.stdout, r.stderr)
    assert r.stdout, r.stderr
    found = run.json["findings"]
    for f in found:
        jsonschema.validate(f, SCHEMA)
    return run, found


def only(found: list[dict], port: int, target: str | None = None) -> dict:
    hits = [f for f in found if f["port"] == port and (target is None or f["target"] == target)]
    assert len(hits) == 1, [(f["target"], f["port"]) for f in found]
    return hits[0]


def test_none_when_mail_can_go(world):
    run, found = diagnose(world, "good.lab.test", "-p", "25,465,587")
    assert run.code == 0 and {f["cause"] for f in found} == {"none"}
    f = only(found, 587)
    assert {a["address"] for a in f["addresses"]} == set(world.addresses("good"))
    assert all(a["verdict"] == "open" and a["smtp"]["tls_mode"] == "starttls" for a in f["addresses"])
    assert f["schema"] == "mailpath.finding/v1" and f["agent"]["version"] and f["severity"] == "info"


def test_mx_hosts_are_followed(world):
    run, found = diagnose(world, "lab.test", "-p", "587")
    assert run.code == 1
    assert {(f["target"], f["domain"], f["cause"]) for f in found} == {
        ("good.lab.test", "lab.test", "none"),
        ("plain.lab.test", "lab.test", "tls"),
    }
    assert any(
        e["source"] == "dns" and "MX 20 plain.lab.test" in e["fact"]
        for e in only(found, 587, "plain.lab.test")["evidence"]
    )


@pytest.mark.parametrize(
    ("name", "code"), [("nothing-here.lab.test", "nxdomain"), ("nullmx.lab.test", "null-mx")]
)
def test_dns(world, name, code):
    run, found = diagnose(world, name, "-p", "25")
    f = only(found, 25)
    assert run.code == 1 and f["cause"] == "dns" and code.replace("-", " ") in f["headline"]
    assert f["addresses"] == [] and f["remediation"]


def test_service_nothing_listens(world):
    _, found = diagnose(world, "good.lab.test", "-p", "2500")
    f = only(found, 2500)
    assert f["cause"] == "service" and f["location"]["kind"] == "destination"
    assert "nothing listens" in f["headline"]


def test_service_never_greets(world):
    _, found = diagnose(world, "silent.lab.test", "-p", "25")
    assert only(found, 25)["cause"] == "service"


@pytest.mark.parametrize(("host", "port"), [("silent", 587), ("expired", 465), ("plain", 465)])
def test_tls(world, host, port):
    _, found = diagnose(world, f"{host}.lab.test", "-p", str(port))
    f = only(found, port)
    assert f["cause"] == "tls", f["headline"]
    if host == "silent":
        assert "implicit TLS" in f["remediation"][0]


def test_auth(world):
    _, found = diagnose(
        world,
        "good.lab.test",
        "-p",
        "587",
        "--user",
        "alice",
        "--password-env",
        "WRONG",
        env={"WRONG": "not it"},
    )
    f = only(found, 587)
    assert f["cause"] == "auth" and "not it" not in json.dumps(found)


@pytest.mark.parametrize(
    ("node", "action", "hop", "kind"),
    [
        ("r2", "tcp-reset", 2, "reset"),
        ("r1", "admin-prohibited", 1, "rejected"),
        ("r2", "drop", 2, "dropped"),
    ],
)
def test_firewall(world, node, action, hop, kind):
    world.lab.block(node, 25, action)
    _, found = diagnose(world, "good.lab.test", "-p", "25")
    f = only(found, 25)
    assert f["cause"] == "firewall", f["headline"]
    assert f["location"]["kind"] == "hop" and f["location"]["hop"] == hop
    assert f["location"]["address"] in (world.lab.addr(node, 4), world.lab.addr(node, 6))
    assert kind in f["headline"]
    refs = [e["ref"] for e in f["evidence"]]
    assert any(r.startswith("probe:") for r in refs) and any(r.startswith("trace:") for r in refs)


def test_network(world):
    v4, v6 = world.addresses("good")
    world.lab.route("r2", "unreachable", dest=f"{v4}/32")
    world.lab.route("r2", "unreachable", dest=f"{v6}/128", family=6)
    _, found = diagnose(world, "good.lab.test", "-p", "25")
    f = only(found, 25)
    assert f["cause"] == "network" and f["location"]["hop"] == 2


@pytest.mark.parametrize("family", [4, 6])
def test_first_router_black_holes_the_destination(world, family):
    """Nothing answers, not even hop 1 (a blackhole route swallows even the probes that expire
    there): the finding names the gateway from this host's routing table, which answers its
    own echo, and never this host or a hop 0."""
    lab = world.lab
    dest = world.addresses("good")[family == 6]
    lab.route("r1", "blackhole", dest=f"{dest}/{128 if family == 6 else 32}", family=family)
    _, found = diagnose(world, dest, "-p", "25", "--no-cloud")
    f = only(found, 25)
    gateway = lab.addr("r1", family)
    assert f["cause"] == "network" and f["location"] == {
        "kind": "hop",
        "hop": 1,
        "address": gateway,
        "component": None,
    }, f
    assert "is up (it answers echo) but forwards nothing" in f["headline"]
    assert any(e["ref"].endswith("/gateway") and "answers an echo" in e["fact"] for e in f["evidence"])
    text = json.dumps(f)
    assert "hop 0" not in text and "this host" not in f["headline"]


def test_directly_connected_destination_that_drops(world):
    """r1 itself as the destination, dropping TCP 2600 in its INPUT chain: the control echo
    reaches it at hop 1, so the drop is the destination's own, not this host's."""
    lab = world.lab
    r1 = lab.addr("r1", 4)
    lab.sh("r1", "iptables -I INPUT -p tcp --dport 2600 -j DROP")
    try:
        _, found = diagnose(world, r1, "-p", "2600", "--no-cloud")
    finally:
        lab.sh("r1", "iptables -D INPUT -p tcp --dport 2600 -j DROP")
    f = only(found, 2600)
    assert f["cause"] == "firewall" and f["location"]["kind"] == "destination", f
    assert f["location"]["hop"] == 1 and f["location"]["address"] == r1
    assert "hop 0" not in json.dumps(f)


def test_a_name_only_the_system_resolver_knows_is_a_host(world):
    """DNS says NXDOMAIN, /etc/hosts knows the name: diagnosed as that host, and said so."""
    world.lab.add_host("intranet.lab.test", *world.addresses("good"))
    _, found = diagnose(world, "intranet.lab.test", "-p", "25", "--no-cloud")
    f = only(found, 25)
    # diagnosed as that host: its certificate does not carry the /etc/hosts alias, rightly
    assert f["cause"] == "tls" and f["target"] == "intranet.lab.test", f
    assert "cert-name-mismatch" in f["addresses"][0]["smtp"]["problems"]
    assert {a["address"] for a in f["addresses"]} == set(world.addresses("good"))
    assert any("knows it as a host" in e["fact"] for e in f["evidence"])


def test_cloud_asked_for_but_not_found_is_said(world):
    _, found = diagnose(world, "good.lab.test", "-p", "587", "--cloud")
    assert {f["cause"] for f in found} == {"none"}
    errors = [f["agent"]["cloud"]["error"] for f in found]
    assert all("not on a recognised cloud host" in e for e in errors), errors
    r = world.lab.exec(
        "client",
        [MAILPATH, "diagnose", "good.lab.test", "-p", "587", "--cloud", "--ca-file", str(world.ca_file)],
        check=False,
        timeout=120,
    )
    assert "cloud check: cloud check failed: not on a recognised cloud host" in " ".join(r.stdout.split())


def test_bad_input_and_exit_codes(world):
    for args in (
        ("diagnose", "bad host!"),
        ("diagnose", "lab.test", "-p", "0"),
        ("diagnose", "lab.test", "--provider", "x"),
    ):
        r = world.lab.exec("client", [MAILPATH, *args], check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_human_report(world):
    world.lab.block("r2", 25, "drop")
    r = world.lab.exec(
        "client",
        [MAILPATH, "diagnose", "good.lab.test", "-p", "25", "--timeout", "0.5", "--retries", "1"],
        check=False,
        env={**os.environ, "COLUMNS": "160"},
    )
    first = r.stdout.splitlines()[0]
    r2 = [world.lab.addr("r2", 4), world.lab.addr("r2", 6)]
    assert first in [f"25 on good.lab.test: dropped after hop 2 ({a}) — firewall" for a in r2], r.stdout
    assert "evidence:" in r.stdout and "what to do:" in r.stdout


# -- the cloud causes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud_lab():
    """A lab whose client runs moto (the EC2 API) and an IMDSv2 on its own loopback."""
    from lab import Lab, cloud

    with Lab() as lab:
        lab.listen([25, 587])
        lab.block("r1", 25, "drop")  # what AWS's edge does to port 25, from the inside
        yield lab, cloud.start(lab)


@pytest.mark.parametrize(("scenario", "cause"), [("no-25", "cloud-config"), ("open", "cloud-policy")])
def test_cloud_causes(cloud_lab, scenario, cause):
    lab, cloud = cloud_lab
    ids = cloud.world(scenario)
    env = cloud.env
    r = lab.exec(
        "client",
        [
            MAILPATH,
            "diagnose",
            lab.server4,
            "-p",
            "25,587",
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--smtp-timeout",
            "2",
            "--json",
            *(["--cloud"] if cause == "cloud-policy" else []),  # forced, and found anyway (IMDS)
        ],
        check=False,
        timeout=300,
        env={**os.environ, **env},
    )
    found = json.loads(r.stdout)["findings"]
    f25, f587 = only(found, 25), only(found, 587)
    assert f25["cause"] == cause, f25["headline"]
    assert f25["location"]["kind"] == "cloud"
    assert f25["agent"]["cloud"]["instance_id"] == ids["instance"]
    if cause == "cloud-config":
        assert f25["location"]["component"] == ids["sg"] and ids["sg"] in f25["headline"]
    else:
        assert f25["location"]["component"] == "provider-policy"
        assert any("587" in step for step in f25["remediation"])
    assert f587["cause"] in ("none", "service")  # 587 gets through (a listener, not an SMTP server)
    assert f587["addresses"][0]["verdict"] == "open"
