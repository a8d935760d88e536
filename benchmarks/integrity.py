"""Benchmark: what a member's checks against an active coordinator cost per round, against the round itself.

For each (members, parameters) case, in one run on the same data: one real encrypted update
(confide's default CKKS parameters), copied under a fresh seed per member as `benchmarks/load.py`
does, and the coordinator's sum of them. Measured per round:

- the member, uploading: its integrity tags (`aggregation.integrity.contribution_tags`) and the
  Ed25519 signature of its contribution statement; baseline: encrypting the update;
- the coordinator, per upload: rebuilding and verifying the statement; baseline: checking the
  upload envelope (`check_envelope`, what it does to every upload anyway);
- the member, settling: the statements' signatures and rules (`sum_evidence.sum_problem`) and the
  sum's tags and seeds (`verify_sum`); baseline: decrypting the sum;
- bytes per member per round: the statement's query parameters on the upload, the statements of
  every contributor fetched with the sum, and the applied statement; baseline: the upload envelope
  and the sum envelope. The key certificate is once per federation and listed apart.

Prints one JSON object with one entry per case ("<members>x<params>"), times in ms (median of
`--repeats`), and ratios to the baselines. Not a test: nothing here gates on time.

Usage: python benchmarks/integrity.py [--members 3 100] [--sizes 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from confide.aggregation.envelope import check_envelope, decrypt_sum, encrypt_update, sum_envelopes
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.integrity import Contributor, contribution_tags, integrity_key, verify_sum
from confide.aggregation.keys import create_key_material
from confide.aggregation.params import DEFAULT_PARAMETERS
from confide.aggregation.wire import KIND_UPDATE, SEED_BYTES, build_envelope, read_header, read_seeds
from confide.formats import AppliedStatement, ContributionStatement, sha256
from confide.identity import Identity
from confide.platform.messages import RoundContributions
from confide.platform.sum_evidence import SumEvidence, sum_problem

LAYOUT = sha256(b"integrity benchmark layout")


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall time of `function()` in ms over `repeats` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def copies(envelope: bytes, n: int) -> list[bytes]:
    h = read_header(envelope)
    blobs = [envelope[o : o + size] for o, size in zip(h.ciphertext_offsets(), h.ciphertext_lengths)]
    return [build_envelope(KIND_UPDATE, h.key_id, h.layout_hash, h.n_values, h.slots, [os.urandom(SEED_BYTES)],
                           h.bits, h.last_bits, blobs) for _ in range(n)]


def decrypted(secret, total: bytes) -> None:
    """Decrypt the sum. The copies share one upload's c0 under other seeds, so the result is noise and
    its count check fails at the very end, after all the work a real decryption does (a per seed)."""
    try:
        decrypt_sum(secret, total, LAYOUT)
    except DecryptionCheckFailed:
        pass


class Roster:
    """Members with identities; stands for the federation file where `sum_problem` reads its id."""

    def __init__(self, n: int) -> None:
        self.identities = {f"m{i:03d}": Identity.generate(f"m{i:03d}") for i in range(n)}
        self.public = {i: ident.public for i, ident in self.identities.items()}
        self.federation_id = "bench"


def run_case(n: int, size: int, repeats: int) -> dict:
    secret = create_key_material(DEFAULT_PARAMETERS)
    key = integrity_key(secret.to_bytes(), secret.key_id)
    delta = np.random.default_rng(0).normal(0, 0.01, size)
    encrypt_ms, first = timed(lambda: encrypt_update(secret, delta, 1.0, LAYOUT), repeats)
    envelopes = copies(first, n)
    roster = Roster(n)
    members = list(roster.identities)

    def statement(i: int) -> ContributionStatement:
        envelope, who = envelopes[i], members[i]
        header = read_header(envelope)
        tags = contribution_tags(secret, key, "bench", 1, who, envelope)
        return roster.identities[who].sign_document(ContributionStatement(
            federation="bench", round=1, institution=who, key_id=header.key_id, envelope_sha256=sha256(envelope),
            seed=read_seeds(envelope, header)[0].hex(), tags=tags))

    tag_ms, _ = timed(lambda: statement(0), repeats)
    statements = [statement(i) for i in range(n)]

    def coordinator_check() -> bool:
        """What `Coordinator.upload` does with the statement: rebuild it from the envelope, verify it."""
        envelope, s = envelopes[0], statements[0]
        header = read_header(envelope)
        rebuilt = ContributionStatement(
            federation="bench", round=1, institution=s.institution, key_id=header.key_id,
            envelope_sha256=sha256(envelope), seed=read_seeds(envelope, header)[0].hex(), tags=s.tags,
            signature=s.signature)
        return roster.public[s.institution].signed(rebuilt)

    statement_check_ms, ok = timed(coordinator_check, repeats)
    assert ok
    public = secret.public_context()
    envelope_check_ms, _ = timed(lambda: check_envelope(public, envelopes[0]), repeats)
    total = sum_envelopes(public, envelopes)
    evidence = SumEvidence(tuple(statements), sha256(total), n)

    def member_checks() -> None:
        problem = sum_problem(roster, roster.public, members[0], 1, secret.key_id, total, evidence,
                              statements[0].envelope_sha256, set())
        assert problem is None, problem
        verify_sum(secret, key, "bench", 1, total, [Contributor(s.institution, s.seed, s.tags) for s in statements],
                   LAYOUT, size)

    verify_ms, _ = timed(member_checks, repeats)
    decrypt_ms, _ = timed(lambda: decrypted(secret, total), repeats)
    own = statements[0]
    query = len(f"&tags={','.join(own.tags)}&min_cohort={own.min_cohort}&statement_signature={own.signature}")
    contributions = len(RoundContributions(round=1, statements=statements).model_dump_json())
    applied = roster.identities[members[0]].sign_document(AppliedStatement(
        federation="bench", round=1, institution=members[0], sum_sha256=sha256(total)))
    applied_bytes = len(applied.model_dump_json())
    added = query + contributions + applied_bytes
    return {
        "members": n, "params": size,
        "member_upload_ms": {"tags_and_signature": round(tag_ms, 2), "encrypt_baseline": round(encrypt_ms, 2),
                             "ratio": round(tag_ms / encrypt_ms, 4)},
        "coordinator_per_upload_ms": {"statement_check": round(statement_check_ms, 3),
                                      "envelope_check_baseline": round(envelope_check_ms, 3),
                                      "ratio": round(statement_check_ms / envelope_check_ms, 4)},
        "member_settle_ms": {"sum_checks": round(verify_ms, 2), "decrypt_baseline": round(decrypt_ms, 2),
                             "ratio": round(verify_ms / decrypt_ms, 4)},
        "bytes_per_member_per_round": {
            "statement_on_upload": query, "statements_with_sum": contributions, "applied_statement": applied_bytes,
            "added": added, "upload_envelope_baseline": len(first), "sum_envelope_baseline": len(total),
            "ratio_to_upload_plus_sum": round(added / (len(first) + len(total)), 5)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[3, 100])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {f"{n}x{size}": run_case(n, size, args.repeats) for size in args.sizes for n in args.members}
    print(json.dumps({"benchmark": "integrity", "ckks": DEFAULT_PARAMETERS.model_dump(mode="json"),
                      "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                      "cases": results}, indent=1))


if __name__ == "__main__":
    main()
