"""The networked federation: the coordinator's HTTPS service and the institution agent.

- `server.run_coordinator` serves one federation (FastAPI + uvicorn, TLS by default).
- `agent.run_agent` joins it as one institution (outbound HTTPS only, pinned certificate).

The protocol itself lives in `confide.platform.protocol` and `confide.platform.coordinator`; this
package is the shell around them: wire messages, request signatures, TLS, the HTTP client, and
the agent's loop.
"""

from confide.platform.service.agent import Agent, AgentError, AgentReport, run_agent
from confide.platform.service.client import Backoff, CoordinatorClient, CoordinatorRefused, CoordinatorUnreachable
from confide.platform.service.server import CoordinatorSettings, ServerThread, build_server, run_coordinator

__all__ = [
    "Agent", "AgentError", "AgentReport", "Backoff", "CoordinatorClient", "CoordinatorRefused",
    "CoordinatorSettings", "CoordinatorUnreachable", "ServerThread", "build_server", "run_agent", "run_coordinator",
]
