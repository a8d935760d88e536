"""Finding the member whose uploads break sums, without the key: group tests across rounds.

The coordinator cannot decrypt, so it cannot tell a good upload from one that is well formed but
does not decrypt (encrypted under another key, or holding values that overflow the sum). Members
can: a member whose decryption of a round's sum fails its checks reports it, signed
(`protocol.record_undecryptable`). A round is *broken* when at least `min_institutions` members
reported it and more members reported it than signed that they applied it (`is_broken`), so lying
members cannot make honest members look faulty unless they outnumber them.

Assuming one member keeps breaking sums, it is in every broken round and in no round that
decrypts. So the coordinator keeps a set of suspects and narrows it with each summed round:

- a broken round (reported by `min_institutions` members, and by more than signed that they applied
  it): suspects = suspects (everyone, at first) that are in its sum;
- a round that decrypted: suspects = suspects that are not in its sum;
- one suspect left: it is excluded (its uploads are refused from then on, with the reason), as
  long as enough members remain for `min_institutions`; none left: the evidence contradicts the
  assumption (an intermittent fault, several faulty members, false reports) and the search restarts.

While there are suspects, each sum leaves half of the uploading suspects out (`leave_out`), so a
broken round or a good one halves the suspects: about log2(members) rounds find the member.

Why across rounds and never by summing subsets of one round: two sums over one round's uploads
that differ in one member let every key holder subtract them and read that member's update, and a
faulty member that holds the key could provoke such tests on purpose. Each round's sum covers
fresh updates, as when a member drops out of a round. A left-out member's privacy spend is
counted by the member as for any upload; it simply adds nothing that round.

This relies on agents reporting a failed decryption before they answer the next round (agents
settle rounds in order), so that when round r is summed the reports on rounds before r are in.
"""

from __future__ import annotations

import copy

from confide.platform.protocol import FederationState, Round


def is_broken(state: FederationState, r: Round) -> bool:
    """Whether round `r`'s sum broke: at least `min_institutions` members reported it does not decrypt,
    and more members reported it than signed that they applied it. Every member runs the same
    deterministic checks on the same sum, so reports and applied statements on one sum contradict
    each other, and the majority of the members who settled it decides: members lying about a good
    sum cannot frame anyone unless they outnumber the honest members who applied it, and a culprit
    that claims to have applied its own broken sum cannot stop the search alone."""
    reports = len(r.undecryptable)
    return r.sum_sha256 is not None and reports >= state.min_institutions and reports > len(r.applied)


def leave_out_cap(members: int, min_institutions: int, colluders: int) -> int:
    """The most uploads one sum may leave out while the committee still unmasks it: every sum keeps
    `min_institutions + colluders` (contributors' `min_cohort` is at most `min_institutions`, and
    the committee adds `colluders`; `secure_sum.Reveals`)."""
    return max(members - min_institutions - colluders, 0)


def rounds_to_find(members: int, cap: int | None = None) -> int:
    """The most rounds in a row whose sums break before the search excludes a member that breaks every
    sum it is in. The first broken round makes everyone in it a suspect; each later round leaves
    `k = min(cap, suspects // 2)` of them out (`leave_out`): a broken sum keeps the other suspects,
    a sum that decrypts keeps the `k`. Without a cap that is 1 + ceil(log2(members)); a cap of 0 (no
    sum may leave anyone out) lets no search run, and it is 1. Members keep going that long and one
    round more (`patience`), so they never give up before the search can find the culprit."""
    cap = members if cap is None else cap
    if cap == 0:
        return 1
    worst = {1: 0}
    for suspects in range(2, members + 1):
        k = min(cap, suspects // 2)
        worst[suspects] = 1 + max(worst[suspects - k], worst[k])
    return 1 + worst[max(members, 1)]


def patience(members: int, cap: int | None = None) -> int:
    """Rounds in a row with refused sums after which a member leaves: one more than the search needs."""
    return rounds_to_find(members, cap) + 1


def review(state: FederationState) -> FederationState:
    """Narrow the suspects (and exclude a member) with every summed round before the current one
    not yet reviewed. Pure; returns `state` itself when there was nothing new."""
    current = state.current
    upto = current.index - 1 if current is not None else 0
    if upto <= state.reviewed_round:
        return state
    new = copy.deepcopy(state)
    for r in new.rounds:
        if not new.reviewed_round < r.index <= upto or r.sum_sha256 is None or r.status not in ("summed", "closed"):
            continue  # a sum the committee never unmasked says nothing about its uploads
        in_sum = set(r.contributors)
        if is_broken(new, r):
            pool = set(new.suspects) if new.suspects is not None else set(new.members)
            suspects = (pool & in_sum) - set(new.excluded)
        elif new.suspects is not None:
            suspects = set(new.suspects) - in_sum
        else:
            continue
        if len(suspects) == 1 and len(new.members) - len(new.excluded) - 1 >= new.min_institutions:
            (culprit,) = suspects
            new.excluded[culprit] = (f"sums with its upload did not decrypt (reported by members, last in round "
                                     f"{r.index}) and sums without it did")
            new.suspects = None
        else:
            new.suspects = sorted(suspects) or None
    new.reviewed_round = upto
    return new


def leave_out(state: FederationState, uploads: list[str], colluders: int = 0) -> list[str]:
    """Which of the current round's accepted uploads to keep out of its sum: excluded members' (an
    upload accepted before its sender was excluded) and half of the uploading suspects, as far as
    `min_institutions + colluders` (what the committee unmasks, `leave_out_cap`) allow."""
    out = sorted(set(uploads) & set(state.excluded))
    remaining = [u for u in uploads if u not in out]
    if state.suspects is None:
        return out
    candidates = sorted(set(state.suspects) & set(remaining))
    k = max(1, len(candidates) // 2) if candidates else 0
    while k > 0 and len(remaining) - k < state.min_institutions + colluders:
        k -= 1
    return sorted(out + candidates[:k])
