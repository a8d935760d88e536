"""What a member does with ciphertexts: seal its round's update and state it; open the round's sum.

Sealing: a one-time mask shared to the committee (`secure_sum`) keeps the upload unreadable alone,
even to members; the envelope carries the public weight; the signed statement names the envelope,
its integrity tags (`aggregation.integrity`) and its mask shares. Opening: the sum must be exactly
the contributions whose statements come with it (`sum_evidence.sum_problem`), the committee's reveals
must unmask it, its tags must match before anything is decrypted, and the decrypted average must
carry the contributors' public weights and stay within what honest rounds can move (`update_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from confide.aggregation.envelope import DecryptedSum, decrypt_sum, encrypt_update
from confide.aggregation.errors import AggregationError
from confide.aggregation.integrity import Contributor, contribution_tags, verify_sum
from confide.aggregation.keys import SecretKeyMaterial
from confide.aggregation.wire import read_header, read_seeds
from confide.formats import ContributionStatement, sha256
from confide.identity import Identity, PublicIdentity
from confide.platform.secure_sum import mask_upload, share_digests, unmask
from confide.platform.sum_evidence import SumEvidence, influence_problem, weight_problem
from confide.platform.update_bound import max_update
from confide.policies import FederationPolicy


def seal_update(federation: FederationPolicy, roster: dict[str, PublicIdentity], secret: SecretKeyMaterial,
                round_index: int, institution: str, vector: np.ndarray, weight: float,
                layout_hash: str) -> tuple[bytes, bytes]:
    """The round's envelope (`vector` under a fresh one-time mask, times our public `weight`) and
    the mask's shares, sealed to the committee. The mask itself is never kept."""
    mask, shares = mask_upload(federation, roster, secret.key_id, round_index, institution)
    return encrypt_update(secret, vector, weight, layout_hash, mask=mask), shares


def state_upload(identity: Identity, federation: FederationPolicy, secret: SecretKeyMaterial, integrity_key: bytes,
                 round_index: int, envelope: bytes, shares: bytes, min_cohort: int,
                 previous_sum: str) -> ContributionStatement:
    """Our signed statement of our upload: its digest, seed, integrity tags, mask shares, our min_cohort
    and the sum we applied the round before (deterministic: the same after a restart)."""
    fed, me = federation.federation_id, identity.institution_id
    header = read_header(envelope)
    tags = contribution_tags(secret, integrity_key, fed, round_index, me, envelope)
    return identity.sign_document(ContributionStatement(
        federation=fed, round=round_index, institution=me, key_id=header.key_id, envelope_sha256=sha256(envelope),
        seed=read_seeds(envelope, header)[0].hex(), tags=tags, min_cohort=min_cohort,
        shares=share_digests(federation, shares), previous_sum=previous_sum))


@dataclass(frozen=True)
class OpenedSum:
    """A sum opened, or why not: `problem` None and `result` set, or the reverse.

    `broken`: the uploads are at fault (report the sum), not the committee's reveals; it is False
    when the sum could not be unmasked, or was unmasked with no reveal to spare (one wrong reveal
    would then look like a broken upload). `left_out`: reveals outvoted, one line each.
    """

    problem: str | None
    result: DecryptedSum | None = None
    broken: bool = False
    left_out: tuple[str, ...] = ()


def open_sum(federation: FederationPolicy, roster: dict[str, PublicIdentity], secret: SecretKeyMaterial,
             integrity_key: bytes, round_index: int, sum_envelope: bytes, evidence: SumEvidence,
             layout_hash: str, n_values: int, adapter: np.ndarray) -> OpenedSum:
    """Unmask, check the tags of, decrypt and check the round's sum (its evidence already checked).
    Nothing is decrypted before the tags pass; `adapter` is ours before the round (the update bound)."""
    unmasked = unmask(federation, roster, secret.key_id, round_index, list(evidence.statements),
                      list(evidence.reveals))
    if unmasked.problem is not None:
        # The committee's reveals, not the uploads, are at fault: not reported as a broken sum.
        return OpenedSum(f"cannot unmask it: {unmasked.problem}", left_out=tuple(unmasked.left_out))
    try:
        verify_sum(secret, integrity_key, federation.federation_id, round_index, sum_envelope,
                   [Contributor(s.institution, s.seed, s.tags) for s in evidence.statements], layout_hash, n_values)
        result = decrypt_sum(secret, sum_envelope, layout_hash, unmask=unmasked.mask)
    except (AggregationError, ValueError, OverflowError) as exc:
        # Whatever the coordinator relayed that does not parse is a refusal, never a crash: a crash
        # would repeat on every restart and the round would never settle.
        problem = exc.message if isinstance(exc, AggregationError) else f"malformed sum ({exc})"
        return OpenedSum(problem, broken=unmasked.checked, left_out=tuple(unmasked.left_out))
    problem = (weight_problem(federation, evidence.statements, result.total_weight)
               or influence_problem(result.average, max_update(federation, adapter), result.error_bound))
    if problem is not None:
        return OpenedSum(problem, broken=unmasked.checked, left_out=tuple(unmasked.left_out))
    return OpenedSum(None, result, left_out=tuple(unmasked.left_out))
