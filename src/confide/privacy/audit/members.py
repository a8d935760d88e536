"""What several members' ledgers say together: every member of a round applied the same sum.

The coordinator adds the members' ciphertexts and hands each member the sum; a member records the
SHA-256 of the sum it applied (`applied` entries, `sum_sha256`). A coordinator that hands members
different sums splits the federation (each part trains on a sum the others never saw, and the
coordinator can isolate a member's update). One ledger cannot show that; the ledgers of several
members of one federation can, and an auditor handed them fails the audit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from confide.privacy.audit.result import Check
from confide.privacy.ledger_entries import Kind, entries_of


def split_sum_checks(ledgers: Sequence[tuple[str | None, list[dict]]]) -> list[Check]:
    """One failed `applied_sums` check per (federation, round) whose members applied different sums.

    `ledgers`: (institution, entries) per ledger. Returns a passing check when at least two
    institutions' applied sums were compared and all agree, and nothing when there was nothing to
    compare (a single member's ledgers).
    """
    sums: dict[tuple[str, int], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for institution, entries in ledgers:
        for e in entries_of(entries, Kind.APPLIED):
            if (isinstance(e.get("sum_sha256"), str)
                    and isinstance(e.get("federation"), str) and isinstance(e.get("round"), int)):
                sums[(e["federation"], e["round"])][e["sum_sha256"]].add(str(institution))
    compared = {key: by_sum for key, by_sum in sums.items() if len(set().union(*by_sum.values())) > 1}
    failures = []
    for (federation, round_index), by_sum in sorted(compared.items()):
        if len(by_sum) > 1:
            parts = "; ".join(f"{', '.join(sorted(who))} applied {digest[:12]}"
                              for digest, who in sorted(by_sum.items(), key=lambda item: sorted(item[1])))
            failures.append(Check("applied_sums", False, f"round {round_index} of {federation}: the members applied "
                                  f"different sums ({parts}): the coordinator split the federation",
                                  federation=federation))
    if failures or not compared:
        return failures
    return [Check("applied_sums", True, f"{len(compared)} rounds: every member applied the same sum")]
