"""A member's part in secure aggregation: mask and share an upload, reveal share sums, unmask a sum.

The cryptography is `confide.aggregation.secagg`; this module applies the federation's rules to it
with what a member knows for sure (its federation file's roster and committee, the signed
statements). The coordinator only relays: every share is sealed to its committee member and
named by digest in the uploader's signed statement, every reveal is signed by its committee
member and names the contributor set. The rules, each in one place:

- an upload's mask has one share per committee seat, sealed to that member under a label naming
  federation, round, uploader and key (`mask_upload`, checked at the coordinator by `bundle_problem`);
- a committee member reveals once per round, for one set of at least ``max(min_cohort) +
  colluders`` signed uploads of this round whose members all applied the same sum the round
  before, and only shares that the uploaders' statements name (`Reveals.reveal`, durable before
  it is sent);
- a member unmasks a sum only with ``threshold`` reveals signed by committee members for exactly
  the sum's contributor set, all on one polynomial (`unmask`).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import NamedTuple

import numpy as np

from confide.aggregation import secagg
from confide.aggregation.errors import AggregationError
from confide.aggregation.sealing import SHARE_INFO, open_sealed, read_sealed_header, seal_secret
from confide.formats import (
    ContributionStatement,
    RevealStatement,
    contributors_sha256,
    fsync_directory,
    sha256,
    write_atomically,
)
from confide.identity import Identity, PublicIdentity
from confide.policies import FederationPolicy


class RevealRefused(Exception):
    """A committee member will not reveal for this request (the reason says why, in one line)."""


def share_label(federation: str, round_index: int, sender: str, key_id: str) -> str:
    """What a sealed share is of: bound to the blob, so it cannot be replayed elsewhere."""
    return f"mask share {federation} r{round_index} from {sender} key {key_id}"


def mask_upload(federation: FederationPolicy, roster: dict[str, PublicIdentity], key_id: str, round_index: int,
                institution: str) -> tuple[secagg.UploadMask, bytes]:
    """A fresh one-time mask for our upload of `round_index` and its shares, sealed to the committee."""
    n = federation.ckks.poly_modulus_degree
    secret = secagg.ternary_secret(n)
    committee = federation.committee
    shares = secagg.share(secret, len(committee), federation.unmask_threshold)
    label = share_label(federation.federation_id, round_index, institution, key_id)
    blobs = [seal_secret(secagg.shares_to_bytes(s), roster[holder].sealing_public, holder, label, SHARE_INFO)
             for holder, s in zip(committee, shares)]
    return secagg.UploadMask(secagg.mask_seed(federation.federation_id, key_id, round_index), secret), \
        secagg.pack_bundle(blobs)


def share_digests(federation: FederationPolicy, bundle: bytes) -> dict[str, str]:
    """Committee member -> SHA-256 of its sealed share, as the uploader's statement names them."""
    return {holder: sha256(blob) for holder, blob in zip(federation.committee, secagg.unpack_bundle(bundle))}


def bundle_problem(federation: FederationPolicy, key_id: str, round_index: int, sender: str,
                   bundle: bytes) -> str | None:
    """Why `bundle` is not one sealed share per committee seat, labelled for this upload (None: it is)."""
    try:
        blobs = secagg.unpack_bundle(bundle)
        headers = [read_sealed_header(b) for b in blobs]
    except AggregationError as exc:
        return exc.message
    committee = federation.committee
    label = share_label(federation.federation_id, round_index, sender, key_id)
    if [h.recipient_id for h in headers] != committee:
        return f"the mask shares are sealed to {[h.recipient_id for h in headers]}, the committee is {committee}"
    if any(h.key_id != label for h in headers):
        return "a mask share is labelled for another federation, round, uploader or key"
    return None


def split_upload(body: bytes, shares_bytes: int) -> tuple[bytes, bytes]:
    """(envelope, shares bundle) of an upload body that ends with `shares_bytes` of shares."""
    if not 0 <= shares_bytes < len(body):
        raise ValueError(f"shares_bytes {shares_bytes} does not fit a body of {len(body)} bytes")
    cut = len(body) - shares_bytes
    return body[:cut], body[cut:]


def _statement_problem(federation: FederationPolicy, roster: dict[str, PublicIdentity], key_id: str,
                       round_index: int, statements: list[ContributionStatement]) -> str | None:
    """Why these are not signed statements of distinct uploads of this round, each sharing its mask
    with exactly the committee (None: they are)."""
    if not statements:
        return "no contributions"
    seen: set[str] = set()
    committee = set(federation.committee)
    for s in statements:
        if (s.federation, s.round, s.key_id) != (federation.federation_id, round_index, key_id):
            return f"{s.institution}'s statement is for {s.federation} round {s.round} under another key"
        identity = roster.get(s.institution)
        if identity is None or not identity.signed(s):
            return f"{s.institution}'s statement is not signed by a roster member"
        if s.institution in seen:
            return f"{s.institution} appears twice"
        if set(s.shares) != committee:
            return f"{s.institution}'s upload does not share its mask with the committee"
        seen.add(s.institution)
    if len({s.previous_sum for s in statements}) > 1:
        # Honest members apply the same sum each round; different ones mean the coordinator split them
        # (with a colluding member's help, to steer some toward models that make one member stand out).
        return f"the contributors applied different sums in round {round_index - 1}: the federation was split"
    return None


def fewest_unmasked(federation: FederationPolicy, statements: list[ContributionStatement]) -> int:
    """The fewest uploads the committee unmasks with these contributors: the largest `min_cohort` they
    signed, plus the colluders the federation file allows for (so that many honest uploads remain)."""
    return max((s.min_cohort for s in statements), default=1) + federation.colluders


class Reveals:
    """A committee member's reveals, one file per round under `directory`: written before it is sent,
    so after any kill the member reveals the same set again and never a second one."""

    def __init__(self, directory: Path, federation: FederationPolicy, roster: dict[str, PublicIdentity],
                 identity: Identity) -> None:
        self.dir, self.federation, self.roster, self.identity = directory, federation, roster, identity
        if not directory.exists():
            directory.mkdir(parents=True)
            fsync_directory(directory.parent)  # the directory's own entry, before any reveal depends on it

    def _path(self, round_index: int) -> Path:
        return self.dir / f"r{round_index}.json"

    def done(self, round_index: int) -> bool:
        return self._path(round_index).exists()

    def reveal(self, round_index: int, key_id: str, statements: list[ContributionStatement],
               shares: dict[str, bytes]) -> RevealStatement:
        """Our signed share sum over the round's contributor set `statements`, whose sealed shares for us
        are `shares` (uploader -> blob). Raises RevealRefused naming the reason."""
        me = self.identity.institution_id
        fed = self.federation
        if me not in fed.committee:
            raise RevealRefused(f"{me} is not on the committee")
        digest = contributors_sha256(statements)
        path = self._path(round_index)
        if path.exists():
            earlier = RevealStatement.model_validate_json(path.read_bytes())
            if earlier.contributors_sha256 != digest:
                raise RevealRefused(f"asked to unmask a second contributor set in round {round_index}: refused "
                                    "(one set per round, or single uploads could be read by subtraction)")
            return earlier
        problem = _statement_problem(fed, self.roster, key_id, round_index, statements)
        needed = fewest_unmasked(fed, statements)
        if problem is None and len(statements) < needed:
            problem = (f"{len(statements)} contribution(s): the contributors' min_cohort with {fed.colluders} "
                       f"possible colluder(s) needs {needed}")
        if problem is not None:
            raise RevealRefused(problem)
        n = fed.ckks.poly_modulus_degree
        parts = []
        for s in statements:
            blob = shares.get(s.institution)
            if blob is None or sha256(blob) != s.shares[me]:
                raise RevealRefused(f"the share relayed from {s.institution} is not the one its statement names")
            label = share_label(fed.federation_id, round_index, s.institution, key_id)
            try:
                if read_sealed_header(blob).key_id != label:
                    raise RevealRefused(f"the share from {s.institution} is labelled for another upload")
                opened = open_sealed(blob, self.identity.sealing_private, me, SHARE_INFO)
                parts.append(secagg.shares_from_bytes(opened, n, f"the share from {s.institution}"))
            except AggregationError as exc:
                raise RevealRefused(exc.message) from None
        reveal = self.identity.sign_document(RevealStatement(
            federation=fed.federation_id, round=round_index, institution=me, key_id=key_id,
            contributors_sha256=digest,
            share_sum=base64.b64encode(secagg.shares_to_bytes(secagg.add_shares(parts))).decode()))
        write_atomically(path, reveal.model_dump_json().encode())
        return reveal


class Unmasking(NamedTuple):
    """What `unmask` found: a problem (None: none), the mask of the sum, whether reveals beyond the
    threshold checked it, and the reveals left out (one line each: who, why)."""

    problem: str | None
    mask: secagg.UploadMask | None
    checked: bool = False
    left_out: tuple[str, ...] = ()


def unmask(federation: FederationPolicy, roster: dict[str, PublicIdentity], key_id: str, round_index: int,
           statements: list[ContributionStatement], reveals: list[RevealStatement]) -> Unmasking:
    """The round's mask seed with the sum of the contributors' masks, from committee reveals signed for
    exactly this contributor set. Reveals that are not (unsigned, for another set, malformed) are left
    out, as are wrong share sums the others outvote (`secagg.reconstruct`); a problem only when fewer
    than the threshold remain or the sums disagree beyond correction."""
    problem = _statement_problem(federation, roster, key_id, round_index, statements)
    if problem is not None:
        return Unmasking(problem, None)
    digest = contributors_sha256(statements)
    committee = federation.committee
    n = federation.ckks.poly_modulus_degree
    points: list[tuple[int, np.ndarray]] = []
    left_out: list[str] = []
    for r in reveals:
        why = None
        if r.institution not in committee or not roster[r.institution].signed(r):
            why = "not signed by the committee member it names"
        elif (r.federation, r.round, r.key_id, r.contributors_sha256) != (federation.federation_id, round_index,
                                                                          key_id, digest):
            why = "for another round, key or contributor set"
        elif any(x == committee.index(r.institution) + 1 for x, _ in points):
            why = "a second reveal of the same seat"
        else:
            try:
                values = secagg.shares_from_bytes(base64.b64decode(r.share_sum, validate=True), n, "the share sum")
            except (binascii.Error, ValueError):
                why = "not base64"
            except AggregationError as exc:
                why = exc.message
            else:
                points.append((committee.index(r.institution) + 1, values))
        if why is not None:
            left_out.append(f"{r.institution}: {why}")
    try:
        rebuilt = secagg.reconstruct(points, federation.unmask_threshold)
    except AggregationError as exc:
        return Unmasking(exc.message, None, False, tuple(left_out))
    left_out += [f"{committee[x - 1]}: a share sum the other reveals outvote" for x in rebuilt.wrong_seats]
    mask = secagg.UploadMask(secagg.mask_seed(federation.federation_id, key_id, round_index), rebuilt.secret)
    return Unmasking(None, mask, rebuilt.checked, tuple(left_out))
