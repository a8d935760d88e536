"""Benchmark: what secure aggregation costs a member, a committee member and the coordinator, per round.

In one run, on the same data and confide's default CKKS parameters, for each adapter size and
federation size (committee of ``min(members, 10)``, threshold and colluders from the defaults):

- a member uploading: masking and sharing (`secure_sum.mask_upload`: the one-time secret, its
  Shamir shares, one sealed share per committee seat) and encrypting with the mask; baseline:
  encrypting the same update without a mask (the scheme before). Bytes: the envelope and the
  shares, per parameter, against the envelope alone;
- the coordinator, per upload: checking the shares bundle and naming its digests; baseline:
  checking the envelope (`check_envelope`, done to every upload anyway);
- a committee member, once per round: its reveal over every contributor (each statement's
  signature, each share's digest, label and seal, the sum); no baseline (the step is new);
- a member settling: unmasking (the reveals' signatures, interpolation) and decrypting with the
  mask; baseline: decrypting the same sum without one.

Prints one JSON object; times are medians of ``--repeats`` in ms. Not a test: nothing gates on time.

Usage: python benchmarks/secagg.py [--members 3 10 100 500] [--sizes 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from integrity import timed  # a sibling benchmark: run as benchmarks/secagg.py
from load import federation_file

from confide.aggregation.envelope import check_envelope, decrypt_sum, encrypt_update, sum_envelopes
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.keys import create_key_material
from confide.aggregation.params import DEFAULT_PARAMETERS
from confide.aggregation.secagg import unpack_bundle
from confide.formats import ContributionStatement, sha256
from confide.identity import Identity, roster_identities
from confide.platform.secure_sum import Reveals, bundle_problem, mask_upload, share_digests, unmask
from confide.policies import load_federation

LAYOUT = sha256(b"secagg benchmark layout")


def federation(root: Path, n: int):
    """A federation file of `n` fresh members (`benchmarks/load.py`'s), loaded, with their identities."""
    (root / f"n{n}").mkdir()
    path, identities = federation_file(root / f"n{n}", n, DEFAULT_PARAMETERS)
    return load_federation(path), identities


def statement(policy, identity: Identity, key_id: str, envelope: bytes, shares: bytes) -> ContributionStatement:
    return identity.sign_document(ContributionStatement(
        federation=policy.federation_id, round=1, institution=identity.institution_id, key_id=key_id,
        envelope_sha256=sha256(envelope), seed="00" * 32, tags=("1",), min_cohort=2,
        shares=share_digests(policy, shares)))


def upload_case(secret, policy, identities, size: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, size)
    roster = roster_identities(policy.roster)
    member = next(iter(identities))
    plain_ms, plain = timed(lambda: encrypt_update(secret, delta, 1.0, LAYOUT), repeats)
    share_ms, (mask, shares) = timed(lambda: mask_upload(policy, roster, secret.key_id, 1, member), repeats)
    masked_ms, masked = timed(lambda: encrypt_update(secret, delta, 1.0, LAYOUT, mask=mask), repeats)
    public = secret.public_context()
    check_ms, _ = timed(lambda: check_envelope(public, masked), repeats)
    bundle_ms, _ = timed(lambda: (bundle_problem(policy, secret.key_id, 1, member, shares),
                                  share_digests(policy, shares)), repeats)
    return {
        "n_params": size,
        "committee": len(policy.committee),
        "member_encrypt_baseline_ms": plain_ms,
        "member_mask_and_share_ms": share_ms,
        "member_encrypt_masked_ms": masked_ms,
        "member_upload_ratio": (share_ms + masked_ms) / plain_ms,
        "envelope_bytes": len(masked),
        "shares_bytes": len(shares),
        "baseline_bytes_per_param": len(plain) / size,
        "bytes_per_param": (len(masked) + len(shares)) / size,
        "coordinator_check_envelope_baseline_ms": check_ms,
        "coordinator_check_shares_ms": bundle_ms,
    }


def round_case(secret, policy, identities, size: int, repeats: int, root: Path) -> dict:
    """Every member uploads (one update, masked afresh per member); the committee reveals; a member settles."""
    roster = roster_identities(policy.roster)
    delta = np.random.default_rng(1).normal(0, 0.01, size)
    statements, envelopes, bundles = [], [], {}
    for name, ident in identities.items():
        mask, shares = mask_upload(policy, roster, secret.key_id, 1, name)
        envelope = encrypt_update(secret, delta, 1.0, LAYOUT, mask=mask) if len(envelopes) < 2 else envelopes[-1]
        envelopes.append(envelope)
        bundles[name] = shares
        statements.append(statement(policy, ident, secret.key_id, envelope, shares))
    holder = policy.committee[0]
    mine = {name: unpack_bundle(blob)[0] for name, blob in bundles.items()}
    reveals_dir = root / f"reveals-{len(identities)}-{size}"
    counter = iter(range(10**6))

    def reveal_once():
        return Reveals(reveals_dir / str(next(counter)), policy, roster, identities[holder]).reveal(
            1, secret.key_id, statements, mine)

    reveal_ms, _ = timed(reveal_once, repeats)
    reveals = []
    for seat, holder in enumerate(policy.committee[: policy.unmask_threshold]):
        theirs = {name: unpack_bundle(blob)[seat] for name, blob in bundles.items()}
        reveals.append(Reveals(reveals_dir / f"seat-{seat}", policy, roster, identities[holder]).reveal(
            1, secret.key_id, statements, theirs))
    total = sum_envelopes(secret.public_context(), envelopes[:2])  # a sum's size does not grow with members
    unmask_ms, unmasked = timed(lambda: unmask(policy, roster, secret.key_id, 1, statements, reveals), repeats)
    mask = unmasked.mask
    plain_ms, _ = timed(lambda: _decrypt_any(secret, total, None), repeats)
    masked_ms, _ = timed(lambda: _decrypt_any(secret, total, mask), repeats)
    return {
        "members": len(identities),
        "n_params": size,
        "committee_reveal_ms": reveal_ms,
        "member_unmask_ms": unmask_ms,
        "member_decrypt_baseline_ms": plain_ms,
        "member_decrypt_unmasked_ms": masked_ms,
        "member_settle_ratio": (unmask_ms + masked_ms) / plain_ms,
        "reveal_bytes": 4 * DEFAULT_PARAMETERS.poly_modulus_degree * 4 // 3,
    }


def _decrypt_any(secret, total: bytes, mask) -> None:
    """Decrypt with the mask (of every member, while the sum holds two uploads, so its checks fail: the time
    of the work counts, which does not depend on what the slots hold)."""
    try:
        decrypt_sum(secret, total, LAYOUT, unmask=mask)
    except DecryptionCheckFailed:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, nargs="+", default=[3, 10, 100, 500])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    secret = create_key_material(DEFAULT_PARAMETERS)
    out: dict = {"load_average": os.getloadavg(), "upload": {}, "round": {}}
    with tempfile.TemporaryDirectory(prefix="confide-secagg-") as tmp:
        root = Path(tmp)
        for n in args.members:
            policy, identities = federation(root, n)
            for size in args.sizes:
                if n == max(args.members):
                    out["upload"][str(size)] = upload_case(secret, policy, identities, size, args.repeats)
                    print(json.dumps(out["upload"][str(size)]), file=sys.stderr)
                out["round"][f"{n}x{size}"] = round_case(secret, policy, identities, size, args.repeats, root)
                print(json.dumps(out["round"][f"{n}x{size}"]), file=sys.stderr)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
