"""The diagnose pipeline as a library: several diagnoses in the caller's own event loop, with
the agent's identity passed in (what the daemon does). Loopback only."""

from __future__ import annotations

import asyncio
import socket

from mailpath.agent.diagnose import DiagnoseOptions, agent_info, diagnose_async


def test_diagnoses_run_together_in_the_callers_loop_under_the_given_agent_name():
    listener = socket.create_server(("127.0.0.1", 0))
    open_port = listener.getsockname()[1]
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    opts = dict(method="connect", timeout=0.3, retries=0, smtp_timeout=0.5, cloud=None)

    async def both():
        agent = agent_info("edge-7")
        return await asyncio.gather(
            diagnose_async("127.0.0.1", DiagnoseOptions(ports=[closed_port], **opts), agent),
            diagnose_async("127.0.0.1", DiagnoseOptions(ports=[open_port], **opts), agent),
        )

    try:
        (refused,), (silent,) = asyncio.run(both())
    finally:
        listener.close()
    assert refused.agent.hostname == "edge-7" and refused.agent.cloud is None
    assert refused.cause == "service" and refused.addresses[0].verdict == "refused"
    # open, but the listener never greets: the SMTP check decides
    assert silent.addresses[0].verdict == "open" and silent.cause == "service"
    assert refused.id != silent.id
