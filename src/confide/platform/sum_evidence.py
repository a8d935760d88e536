"""What a member checks before it applies a round's sum or installs the federation key: pure rules.

The coordinator relays everything, and an operator who edits their own server may rewrite any
reply. So a member trusts only what someone it knows signed: the key holder's certificate of the
federation key (`KeyCertificate`), each contributor's statement of its upload
(`ContributionStatement`), each member's statement of the sum it applied (`AppliedStatement`), all
verified under the roster's keys from the member's own federation file. The cryptographic check
that the sum is exactly the named uploads, with nothing added, is `confide.aggregation.integrity`;
these functions check everything around it, and each returns the first problem in one line (None:
none), so the caller settles the round as failed with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from confide.aggregation.params import COUNT_TOLERANCE
from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    KeyCertificate,
    RevealStatement,
    policy_sha256,
    sha256,
)
from confide.identity import PublicIdentity
from confide.policies import FederationPolicy


@dataclass(frozen=True)
class SumEvidence:
    """What comes with a round's sum: the contributors' signed statements, and what the view announced."""

    statements: tuple[ContributionStatement, ...]
    announced_sha256: str | None
    """The sum's SHA-256 as the federation view gave it."""
    announced_contributors: int
    left_me_out: bool = False
    """The view says our upload was kept out of this sum (a faulty member is being looked for)."""
    reveals: tuple[RevealStatement, ...] = ()
    """The committee's signed reveals for the contributors: what unmasks the sum (`secure_sum.unmask`)."""


def certificate_problem(certificate: KeyCertificate, federation: FederationPolicy,
                        roster: dict[str, PublicIdentity], institution: str, sealed: bytes) -> str | None:
    """Why `certificate` (with our `sealed` key) is not the key holder's key for this federation, or None."""
    holder = federation.key_holder_id
    if certificate.federation != federation.federation_id or certificate.key_holder != holder:
        return (f"the key certificate is for {certificate.federation} by {certificate.key_holder}, not "
                f"{federation.federation_id} by {holder}")
    if certificate.federation_sha256 != policy_sha256(federation):
        return "the key certificate was made for another version of the federation file"
    if not roster[holder].signed(certificate):
        return f"the key certificate is not signed by the key holder {holder}'s roster key"
    if certificate.params != federation.ckks.model_dump(mode="json"):
        return "the certified CKKS parameters are not the federation file's"
    if certificate.sealed_sha256.get(institution) != sha256(sealed):
        return "our sealed key is not the one the key holder certified"
    return None


def sum_problem(federation: FederationPolicy, roster: dict[str, PublicIdentity], institution: str,
                round_index: int, key_id: str, sum_envelope: bytes, evidence: SumEvidence,
                my_upload_sha256: str | None, applied_before: set[str]) -> str | None:
    """Why the round's sum cannot be exactly this round's contributions as their members stated them, or None.

    `my_upload_sha256` is our own upload in the round (None if we did not upload);
    `applied_before` holds the digests of every sum we applied in earlier rounds.
    """
    digest = sha256(sum_envelope)
    if evidence.announced_sha256 != digest:
        return "the sum is not the one the coordinator announced for the round"
    if digest in applied_before:
        return "this sum was already applied in an earlier round (a replay)"
    statements = evidence.statements
    for s in statements:
        if (s.federation, s.round, s.key_id) != (federation.federation_id, round_index, key_id):
            return f"{s.institution}'s statement is for round {s.round} of {s.federation}, not this round"
        if s.institution not in roster or not roster[s.institution].signed(s):
            return f"{s.institution}'s contribution statement is not signed by its roster key"
    institutions = [s.institution for s in statements]
    if len(set(institutions)) != len(institutions) or len({s.seed for s in statements}) != len(statements):
        return "the sum names one contribution more than once"
    demanding = max(statements, key=lambda s: s.min_cohort, default=None)
    if demanding is not None and len(statements) < demanding.min_cohort:
        return (f"the sum has {len(statements)} contribution(s), below {demanding.institution}'s min_cohort "
                f"{demanding.min_cohort}: opening it would expose that member's update")
    if len(statements) != evidence.announced_contributors:
        return (f"the sum names {len(statements)} contribution(s), the federation view announced "
                f"{evidence.announced_contributors}")
    if my_upload_sha256 is not None and not evidence.left_me_out and not any(
            s.institution == institution and s.envelope_sha256 == my_upload_sha256 for s in statements):
        return "our own upload is not in the sum, and the view does not say it was left out"
    return None


def weight_problem(federation: FederationPolicy, statements: tuple[ContributionStatement, ...],
                   total_weight: float) -> str | None:
    """Why the sum's decrypted weight slot is not the contributors' public weights from the federation
    file (a member that inflated its weight to steer the average), or None."""
    weights = {m.id: m.weight for m in federation.roster}
    expected = sum(weights.get(s.institution, 0.0) for s in statements)
    if abs(total_weight - expected) > COUNT_TOLERANCE:
        return (f"the sum's weight slot decrypts to {total_weight:.6g}, its contributors' weights in the "
                f"federation file add up to {expected:g}: a contributor claimed another weight")
    return None


def influence_problem(average: np.ndarray, bound: np.ndarray | None, error: float) -> str | None:
    """Why the decrypted average is beyond what honest rounds can produce (`update_bound.max_update`:
    some contributor's update is out of bounds), or None. `error` is the average's CKKS error bound."""
    if bound is None:
        return None
    excess = np.abs(average) - bound - error - 1e-9 * bound
    j = int(np.argmax(excess))
    if excess[j] <= 0:
        return None
    return (f"the average moves parameter {j} by {average[j]:.3g}; one honest round moves it at most "
            f"{bound[j]:.3g}: a contributor's update is out of bounds")


def split_problem(statement: AppliedStatement, federation: FederationPolicy, roster: dict[str, PublicIdentity],
                  ours: str | None) -> str | None:
    """Why another member's applied statement shows the coordinator split the federation, or None.

    `ours` is the digest of the sum we applied in that round (None: we applied none). A statement
    that does not verify is ignored (None): the coordinator could make those up, and proves nothing.
    """
    if (statement.federation != federation.federation_id or statement.institution not in roster
            or not roster[statement.institution].signed(statement)):
        return None
    if ours is not None and statement.sum_sha256 != ours:
        return (f"{statement.institution} applied sum {statement.sum_sha256[:12]}... in round {statement.round}, "
                f"we were handed {ours[:12]}...: the coordinator split the federation")
    return None
