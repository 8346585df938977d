"""deploy/ checked by the tools made for each file: hadolint (the container file),
kubernetes-validate (the manifests, against the Kubernetes API's schemas, strict),
systemd-analyze (verify and the offline security score of the units), and the properties the
deployment promises (the agent holds CAP_NET_RAW and nothing else; the collector nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
MAILPATH = BIN / "mailpath"


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:/usr/bin:/usr/sbin:/bin:/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed (make deps installs it)")
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)


# -- the container file ----------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    r = run(tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_planted_mistake(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((DEPLOY / "Dockerfile").read_text().replace("USER 10001:10001", "USER root"))
    r = run(tool("hadolint"), "--failure-threshold", "info", str(bad))
    assert r.returncode != 0 and "DL3002" in r.stdout


def test_the_image_runs_as_a_user_and_carries_only_a_permitted_net_raw():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM ", text, re.M)
    assert len(stages) >= 2, "multi-stage build"
    assert re.search(r"^USER 10001", text, re.M)
    assert "setcap cap_net_raw+p " in text  # +p, not +ep: see probes/caps.py


# -- Kubernetes ----------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_the_manifests_validate_against_the_kubernetes_schemas():
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    r = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_validator_catches_a_planted_mistake(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text(
        (DEPLOY / "kubernetes" / "agent.yaml").read_text().replace("hostNetwork:", "hostNetworks:")
    )
    r = run(tool("kubernetes-validate"), "--strict", "--quiet", str(bad))
    assert r.returncode != 0


def test_the_agent_daemonset_has_the_hosts_network_and_only_net_raw():
    ds = manifests()[("DaemonSet", "mailpath-agent")]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (agent,) = pod["containers"]
    caps = agent["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "secret" in volumes["token"] and "configMap" in volumes["config"]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    port = int(annotations["prometheus.io/port"])
    assert port in [p["containerPort"] for p in agent["ports"]]
    config = manifests()[("ConfigMap", "mailpath-agent")]["data"]["agent.toml"]
    assert f":{port}" in config


def test_the_collector_is_replicated_ready_on_readyz_and_holds_no_capability():
    objects = manifests()
    deployment = objects[("Deployment", "mailpath-collector")]
    assert deployment["spec"]["replicas"] >= 2
    (collector,) = deployment["spec"]["template"]["spec"]["containers"]
    assert collector["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert collector["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (env,) = [e for e in collector["env"] if e["name"] == "MAILPATH_COLLECTOR_DATABASE_URL"]
    assert "secretKeyRef" in env["valueFrom"]
    service = objects[("Service", "mailpath-collector")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


# -- systemd -------------------------------------------------------------------------------


def units(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's mailpath (verify checks it exists)."""
    out = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/mailpath/bin/mailpath", str(MAILPATH)))
        out.append(copy)
    return out


def test_the_units_verify_without_a_warning(tmp_path):
    r = run(tool("systemd-analyze"), "verify", *map(str, units(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_systemd_analyze_catches_a_misspelt_setting(tmp_path):
    (unit,) = [u for u in units(tmp_path) if u.name == "mailpath-agent.service"]
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    r = run(tool("systemd-analyze"), "verify", str(unit), cwd=tmp_path)
    assert "Unknown key" in r.stderr


@pytest.mark.parametrize("name", ["mailpath-agent.service", "mailpath-collector.service"])
def test_the_units_score_ok_on_systemds_security_analysis(tmp_path, name):
    (unit,) = [u for u in units(tmp_path) if u.name == name]
    r = run(tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(unit), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert level <= 2.0, r.stdout  # systemd calls up to 2.0 "OK"


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_agent_unit_holds_net_raw_only_and_the_collector_nothing():
    agent = settings(DEPLOY / "systemd" / "mailpath-agent.service")
    collector = settings(DEPLOY / "systemd" / "mailpath-collector.service")
    assert agent["AmbientCapabilities"] == agent["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert collector["CapabilityBoundingSet"] == collector["AmbientCapabilities"] == [""]
    for unit in (agent, collector):
        assert unit["DynamicUser"] == unit["NoNewPrivileges"] == ["yes"]
        assert unit["ProtectSystem"] == ["strict"]
        assert unit["StateDirectory"]
    assert any(c.startswith("collector-token:") for c in agent["LoadCredential"])


# -- Prometheus ----------------------------------------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"


def test_the_scrape_configuration_passes_promtool():
    r = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_the_alerting_rules_pass_promtool_check_and_their_unit_tests():
    r = run(tool("promtool"), "check", "rules", "mailpath-rules.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(tool("promtool"), "test", "rules", "mailpath-rules.test.yml", cwd=PROMETHEUS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path):
    shutil.copy(PROMETHEUS / "mailpath-rules.yml", tmp_path)
    text = (PROMETHEUS / "mailpath-rules.test.yml").read_text()
    (tmp_path / "t.yml").write_text(text.replace("agent: web-1", "agent: web-2"))
    r = run(tool("promtool"), "test", "rules", "t.yml", cwd=tmp_path)
    assert r.returncode != 0


def test_the_kubernetes_scrape_job_keeps_annotated_pods_only():
    (job,) = yaml.safe_load((PROMETHEUS / "kubernetes-scrape.yml").read_text())["scrape_configs"]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keep and keep[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


def test_every_metric_the_rules_name_is_one_mailpath_exposes():
    """The rules' metric names against the real expositions of the agent (with a target, a
    certificate and a spool) and of the collector."""
    import datetime as dt

    from mailpath.agent.daemon.metrics import Metrics as AgentMetrics
    from mailpath.agent.daemon.rounds import PortFacts
    from mailpath.collector.metrics import Metrics as CollectorMetrics
    from prometheus_client import generate_latest

    agent = AgentMetrics()
    fact = PortFacts("mx.example.test", 25, "none", "info", {"open": 1}, 0.01, 2e9)
    agent.target_done("example.test", [fact], None)
    agent.dropped(1)

    class Spool:
        def counts(self):
            return type("Counts", (), {"pending": 1, "dead": 0, "dropped": 1})()

    agent.watch_spool(Spool())
    collector = CollectorMetrics(lambda: ({"none": 1}, {"web-1": dt.datetime.now(dt.UTC)}))
    exposed = {
        line.split("{")[0].split(" ")[0]
        for registry in (agent.registry, collector.registry)
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    rules = (PROMETHEUS / "mailpath-rules.yml").read_text()
    named = set(re.findall(r"\bmailpath_[a-z_]+", rules)) - {"mailpath_agent", "mailpath_collector"}
    assert named, "no metric found in the rules"
    assert named <= exposed, f"named in the rules but not exposed: {sorted(named - exposed)}"
