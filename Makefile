# mailpath: `make demo` runs the main job in a lab, `make test` runs every test.
# Both install what they need (Debian packages, a virtual environment) and are safe to rerun.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 iptables nmap dnsmasq-base traceroute iputils-ping procps util-linux openssl exim4-daemon-light tcpdump systemd prometheus libcap2-bin postgresql chromium chromium-driver
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test lint bench deps apt clean

demo: deps
	$(PY) -m lab.demo

test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: deps
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: deps
	$(PY) -m bench.probe_vs_nmap
	$(PY) -m bench.trace_vs_traceroute
	$(PY) -m bench.diagnose_vs_separate
	$(PY) -m bench.startup
	$(PY) -m bench.pcap_vs_tshark
	$(PY) -m bench.agent_delivery
	$(PY) -m bench.agent_idle
	$(PY) -m bench.agent_round
	$(PY) -m bench.collector_ingest

deps: apt $(VENV)/.installed

# Install only what is missing, so a second run asks apt for nothing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3 python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$missing"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	-$(PY) -c 'from lab import sweep; print("removed", sweep())' 2>/dev/null
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
