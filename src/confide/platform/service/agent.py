"""The institution agent: `confide join INSTITUTION --federation F --coordinator URL [--pin FP]`.

It only ever connects out, over TLS with a pinned certificate, and drives its member with the same
`RoundDriver` that `confide simulate` uses (`confide.platform.driver`), over the HTTPS client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from confide.identity import Identity
from confide.platform.driver import AgentReport, RoundDriver, admit
from confide.platform.service.client import Backoff, CoordinatorClient
from confide.policies import load_federation, load_institution

__all__ = ["run_agent"]


def run_agent(
    institution_path: Path,
    federation_path: Path,
    coordinator_url: str,
    pin: str | None = None,
    ca_file: Path | None = None,
    once: bool = False,
    say: Callable[[str], None] = print,
    backoff: Backoff = Backoff(),
    wait_s: float = 20.0,
    member_factory: Callable[..., Any] | None = None,
) -> AgentReport:
    """Join the federation as the institution of `institution_path`; return what was done.

    Checks the federation against the institution's policy first (AgentError listing the failed
    rules if it may not join). Raises BadInput subclasses for bad files, a wrong pin or a
    coordinator that refuses us; network errors are retried (see `Backoff`).
    """
    federation = load_federation(federation_path)
    policy = load_institution(institution_path)
    admit(federation, policy)
    if member_factory is None:
        from confide.platform.member import Member as member_factory
    identity = Identity.load(policy.identity_path)
    client = CoordinatorClient(coordinator_url, identity, federation.federation_id, pin=pin, ca_file=ca_file,
                               backoff=backoff, say=say)
    try:
        member = member_factory(federation, policy)
        journal = Path(policy.state_dir) / "federations" / federation.federation_id / "agent.json"
        return RoundDriver(member, client, federation, journal, say=say, wait_s=wait_s).run(once=once)
    finally:
        client.close()
