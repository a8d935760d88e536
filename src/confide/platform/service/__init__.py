"""The networked federation: the coordinator's HTTPS service and the institution agent.

- `server.run_coordinator` serves one federation (FastAPI + uvicorn, TLS by default).
- `agent.run_agent` joins it as one institution (outbound HTTPS only, pinned certificate).

The protocol itself lives in `confide.platform.protocol`, `coordinator`, `hub` (the coordinator's
side) and `driver` (a member's side), with the messages both exchange (`messages`); this package is
the HTTP shell around them: the app, request signatures, the request gate, TLS and the client.
"""

from confide.platform.service.agent import run_agent
from confide.platform.service.client import Backoff, CoordinatorClient, CoordinatorUnreachable
from confide.platform.service.server import CoordinatorSettings, ServerThread, build_server, run_coordinator

__all__ = [
    "Backoff", "CoordinatorClient", "CoordinatorSettings", "CoordinatorUnreachable", "ServerThread", "build_server",
    "run_agent", "run_coordinator",
]
