"""The agent's configuration: every key, the environment's overrides, and a bad file told as
one line per problem (file, key, what) with exit 2 before anything runs. Values, secrets
included, never appear in those lines."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import trustme
from mailpath.agent.daemon.config import AgentConfig, ConfigError, dotted, load, parse_listen

from tests.conftest import MAILPATH

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """
[[targets]]
target = "example.com"
[stdout]
enabled = true
"""


@pytest.fixture(autouse=True)
def _no_mailpath_env(monkeypatch):
    """The caller's MAILPATH_* variables do not leak into these tests."""
    import os

    for k in list(os.environ):
        if k.startswith("MAILPATH_"):
            monkeypatch.delenv(k)


def with_keys(keys: str) -> str:
    """MINIMAL with more keys in its target."""
    return MINIMAL.replace('"example.com"', '"example.com"\n' + keys)


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    return [line.removeprefix(f"{path}: ") for line in e.value.lines]


def test_the_minimal_file_and_its_defaults(tmp_path):
    c = load(write(tmp_path, MINIMAL))
    assert (c.interval, c.jitter, c.report, c.heartbeat, c.concurrency) == (300, 0.1, "changes", 600, 8)
    assert c.spool_dir == Path("/var/lib/mailpath") and c.spool_path == Path("/var/lib/mailpath/spool.db")
    (t,) = c.targets
    assert t.ports == [25, 465, 587] and t.follow_mx and t.smtp_password() is None
    assert c.metrics.address() == ("127.0.0.1", 9464)  # loopback unless told otherwise
    assert c.collector is None and c.cloud.options().required is False and c.probe.method == "auto"


def test_every_key(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "token").write_text("tok\n")
    c = load(
        write(
            tmp_path,
            f"""
            agent_name = "edge-1"
            interval = 60
            jitter = 0.2
            report = "all"
            heartbeat = 900
            concurrency = 4
            spool_dir = "{tmp_path}/spool"
            stop_timeout = 5
            flush_timeout = 7

            [probe]
            method = "connect"
            timeout = 0.5
            retries = 1
            min_wait = 1
            smtp_timeout = 3
            max_hops = 12
            dns_timeout = 2

            [cloud]
            check = "on"
            provider = "aws"
            instance_id = "i-0123"
            region = "eu-west-1"

            [[targets]]
            target = "example.com"
            ports = [587, 25, 587]
            follow_mx = false
            nameservers = ["192.0.2.53", "[2001:db8::53]:5353"]
            family = 6
            tls_ca_file = "{tmp_path}/ca.pem"
            server_name = "smtp.example.com"
            ehlo = "agent.example.com"
            mail_from = ""
            rcpt_to = ["postmaster@example.com"]
            smtp_user = "alice"
            smtp_password_file = "{tmp_path}/password"

            [[targets]]
            target = "[2001:db8::25]"

            [delivery]
            batch_size = 50
            spool_max_count = 1000

            [collector]
            url = "https://collector.internal:8443"
            token_file = "{tmp_path}/token"
            ca_file = "{tmp_path}/ca.pem"

            [otlp]
            endpoint = "http://127.0.0.1:4318/v1/logs"

            [stdout]
            enabled = true

            [metrics]
            listen = "[::1]:0"
            """,
        )
    )
    a, b = c.targets
    assert (
        a.ports == [25, 587]
        and a.family == 6
        and a.nameserver_addresses()
        == [
            ("192.0.2.53", 53),
            ("2001:db8::53", 5353),
        ]
    )
    assert a.smtp_password() == "s3cret" and a.mail_from == "" and not a.follow_mx
    assert b.host == "2001:db8::25" and b.ports == [25, 465, 587]
    assert c.cloud.options().required and c.cloud.options().instance_id == "i-0123"
    assert c.delivery.batch_size == 50 and c.delivery.spool_max_count == 1000
    assert c.metrics.address() == ("::1", 0) and c.report == "all" and c.probe.max_hops == 12
    assert c.summary() == "2 targets (5 ports), every 60 s, report all, to collector+otlp+stdout"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1\n" + MINIMAL, ["bogus: unknown key"]),
        ("interval = 0\n" + MINIMAL, ["interval: Input should be greater than or equal to 1"]),
        ('report = "some"\n' + MINIMAL, ["report: Input should be 'changes' or 'all'"]),
        ("[stdout]\nenabled = true\n", ["targets: missing (required)"]),
        (
            '[[targets]]\ntarget = "example.com"\n',
            ["no sink: give [collector], [otlp], or [stdout] with enabled = true"],
        ),
        (
            MINIMAL + '[[targets]]\ntarget = "Example.com"\n',
            ["targets: Example.com is listed twice"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com:25"'),
            ["targets[0].target: give the host alone, and its ports in ports = [...]"],
        ),
        (
            MINIMAL.replace('"example.com"', '"bad..name"'),
            ["targets[0].target: invalid host 'bad..name' in target 'bad..name'"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nports = [25, 70000]'),
            ["targets[0].ports[1]: Input should be less than or equal to 65535"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nports = []'),
            ["targets[0].ports: List should have at least 1 item after validation, not 0"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nnameservers = ["ns.example.com"]'),
            ["targets[0].nameservers: invalid nameserver 'ns.example.com': give an IP address"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nsmtp_user = "alice"'),
            ["targets[0]: smtp_user needs smtp_password_file or smtp_password_env"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nsmtp_password_env = "HOME"'),
            ["targets[0]: a password source is given but no smtp_user"],
        ),
        (
            MINIMAL.replace(
                '"example.com"', '"example.com"\nsmtp_user = "a"\nsmtp_password_file = "/nonexistent"'
            ),
            ["targets[0]: cannot read smtp_password_file /nonexistent"],
        ),
        (
            MINIMAL.replace(
                '"example.com"', '"example.com"\nsmtp_user = "a"\nsmtp_password_env = "MAILPATH_TEST_UNSET"'
            ),
            ["targets[0]: smtp_password_env: the environment variable MAILPATH_TEST_UNSET is not set"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\ntls_ca_file = "/etc/hostname"'),
            ["targets[0].tls_ca_file: /etc/hostname holds no PEM certificate"],
        ),
        (
            MINIMAL.replace('"example.com"', '"example.com"\nmail_from = "nobody"'),
            ["targets[0].mail_from: expected local@domain"],
        ),
        (
            MINIMAL + "[metrics]\nlisten = 'localhost:9464'\n",
            ["metrics.listen: the address must be an IP address (127.0.0.1, 0.0.0.0, [::1])"],
        ),
        (
            MINIMAL + "[metrics]\nlisten = '127.0.0.1'\n",
            ["metrics.listen: expected ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::1]:9464"],
        ),
        (
            MINIMAL + "[cloud]\ncheck = 'off'\nregion = 'eu-west-1'\n",
            ['cloud: check = "off" turns the cloud check off: remove region'],
        ),
        (MINIMAL + "[cloud]\nprovider = 'gcp'\neni = 'eni-1'\n", ["cloud: eni: AWS only, not gcp"]),
        (
            MINIMAL + "[collector]\nurl = 'ftp://x'\n",
            [
                "collector.url: expected an http:// or https:// URL",
                "collector.token_file: missing (required)",
            ],
        ),
        (MINIMAL + "[delivery]\nbatch_sise = 5\n", ["delivery.batch_sise: unknown key"]),
        (
            MINIMAL + "[probe]\nmethod = 'udp'\ntimeout = -1\n",
            [
                "probe.method: Input should be 'auto', 'raw' or 'connect'",
                "probe.timeout: Input should be greater than or equal to 0.01",
            ],
        ),
        ("interval = 5\ninterval = 6\n", ["not TOML: Cannot overwrite a value (at line 2, column 13)"]),
    ],
)
def test_each_problem_is_one_line_naming_the_file_and_key(tmp_path, text, expected):
    assert errors(tmp_path, text) == expected


def test_every_problem_of_a_file_is_told_at_once(tmp_path):
    got = errors(tmp_path, "interval = 'x'\nbogus = 1\n[[targets]]\ntarget = 'a..b'\nports = [0]\n")
    assert got == [
        "interval: Input should be a valid number, unable to parse string as a number",
        "targets[0].target: invalid host 'a..b' in target 'a..b'",
        "targets[0].ports[0]: Input should be greater than or equal to 1",
        "bogus: unknown key",
    ]


def test_a_file_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "missing.toml")
    assert e.value.lines == [f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"]


def test_values_never_appear_in_the_lines_secrets_least_of_all(tmp_path):
    secret = "hunter2-correct-horse"
    got = errors(
        tmp_path,
        f"""
        interval = "{secret}"
        [[targets]]
        target = "example.com"
        smtp_password = "{secret}"
        [stdout]
        enabled = "{secret}"
        """,
    )
    assert got == [
        "interval: Input should be a valid number, unable to parse string as a number",
        "targets[0].smtp_password: unknown key (passwords go in smtp_password_file or smtp_password_env)",
        "stdout.enabled: Input should be a valid boolean, unable to interpret input",
    ]
    assert not any(secret in line for line in got)


def test_the_environment_overrides_the_file_key_by_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILPATH_INTERVAL", "42")
    monkeypatch.setenv("MAILPATH_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MAILPATH_COLLECTOR__TOKEN_FILE", "/run/credentials/token")
    monkeypatch.setenv("MAILPATH_AGENT_NAME", "node-7")
    monkeypatch.setenv("MAILPATH_DEBUG", "1")  # not a key: other MAILPATH_ variables are left alone
    c = load(write(tmp_path, "interval = 5\n" + MINIMAL + "[collector]\nurl = 'http://127.0.0.1:8080'\n"))
    assert c.interval == 42 and c.spool_dir == tmp_path / "spool" and c.agent_name == "node-7"
    assert c.collector.url == "http://127.0.0.1:8080"  # from the file
    assert c.collector.token_file == Path("/run/credentials/token")  # from the environment


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILPATH_PROBE__TIMEOUT", "soon")
    monkeypatch.setenv("MAILPATH_TARGETS", '[{"target": "example.com", "port": 25}]')
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.lines == [
        "MAILPATH_TARGETS: unknown key (ports = [...])",
        "MAILPATH_PROBE__TIMEOUT: Input should be a valid number, unable to parse string as a number",
    ]


def test_the_password_is_read_when_used(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("first\n")
    c = load(
        write(
            tmp_path,
            MINIMAL.replace(
                '"example.com"', f'"example.com"\nsmtp_user = "a"\nsmtp_password_file = "{tmp_path}/pw"'
            ),
        )
    )
    (tmp_path / "pw").write_text("rotated\n")
    assert c.targets[0].smtp_password() == "rotated"
    assert "rotated" not in repr(c) and "first" not in repr(c)
    monkeypatch.setenv("SMTP_PW", "from-env")
    c = load(
        write(
            tmp_path,
            MINIMAL.replace('"example.com"', '"x.example"\nsmtp_user = "a"\nsmtp_password_env = "SMTP_PW"'),
        )
    )
    assert c.targets[0].smtp_password() == "from-env"


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:80", ("::1", 80))],
)
def test_listen_addresses(text, address):
    assert parse_listen(text) == address


def test_dotted_keys():
    assert dotted(("targets", 0, "ports", 1)) == "targets[0].ports[1]"
    assert dotted(("collector", "url")) == "collector.url" and dotted(()) == ""


def test_the_deployed_configurations_load(tmp_path, monkeypatch):
    """deploy/agent.toml (systemd) and the DaemonSet's ConfigMap are valid configurations."""
    import yaml

    assert isinstance(load(ROOT / "deploy" / "agent.toml"), AgentConfig)
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "agent.yaml").read_text())
    (cm,) = [d for d in docs if d and d["kind"] == "ConfigMap"]
    c = load(write(tmp_path, cm["data"]["agent.toml"]))
    assert c.metrics.address() == ("0.0.0.0", 9464) and c.collector is not None


def test_a_bad_file_exits_2_with_its_lines_before_anything_runs(tmp_path):
    spool = tmp_path / "spool"
    path = write(tmp_path, f"spool_dir = '{spool}'\ninterval = -1\n" + MINIMAL + "[metrics]\nport = 1\n")
    for command in ("run", "once", "status"):
        r = subprocess.run(
            [MAILPATH, "agent", command, "--config", str(path)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.splitlines() == [
            f"mailpath: error: {path}: interval: Input should be greater than or equal to 1",
            f'mailpath: error: {path}: metrics.port: unknown key (listen = "ADDRESS:PORT")',
        ]
    assert not spool.exists()  # nothing ran
