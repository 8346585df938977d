"""The ``mailpath`` command line: one module per command, each a thin shell over a library
function (the daemon calls the same ones). Heavy modules are imported inside the commands, so
``mailpath --help`` stays fast. The commands register, and --help lists them, in the order
of the imports below (the order of the workflow), which is why they are not sorted."""

# isort: skip_file

from __future__ import annotations

from mailpath.agent.cli import probe, trace, dns, smtp, diagnose, cloud, collector, agent, pcap
from mailpath.agent.cli.common import app, main


__all__ = ["agent", "app", "cloud", "collector", "diagnose", "dns", "main", "pcap", "probe", "smtp", "trace"]
