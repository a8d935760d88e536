"""A tiny federation on disk: policies, identities and data for three institutions (tiny BERT)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from confide.identity import Identity
from confide.policies import load_federation, load_institution

WORDS = {"x": ["apple", "pear", "plum", "fig", "kiwi"], "y": ["car", "bus", "train", "bike", "tram"]}


def write_data(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            label = rng.choice("xy")
            handle.write(json.dumps({"text": " ".join(rng.choices(WORDS[label], k=6)), "label": label}) + "\n")


def make_federation_files(
    root: Path,
    ids=("a", "b", "c"),
    rounds: int = 2,
    min_institutions: int = 2,
    budgets=None,
    min_cohorts=None,
    records: int = 48,
) -> tuple[Path, list[Path]]:
    """Write fed.yaml, <id>.yaml, <id>.jsonl and identities under `root`; return the policy paths."""
    root.mkdir(parents=True, exist_ok=True)
    roster = []
    institution_paths = []
    for k, inst in enumerate(ids):
        identity = Identity.generate(inst)
        identity.save(root / "ids" / inst)
        entry = identity.public.to_roster_entry(inst)
        roster.append(f"  - {{id: {inst}, signing_key: '{entry['signing_key']}', "
                      f"sealing_key: '{entry['sealing_key']}'}}")
        write_data(root / f"{inst}.jsonl", records, seed=k)
        budget = (budgets or {}).get(inst, 6.0)
        cohort = (min_cohorts or {}).get(inst, 2)
        path = root / f"{inst}.yaml"
        path.write_text(
            f"kind: institution\ninstitution_id: {inst}\n"
            f"data: {{path: {inst}.jsonl, format: jsonl, eval_fraction: 0.2}}\n"
            f"budget: {{epsilon: {budget}, delta: 1.0e-5}}\n"
            f"min_cohort: {cohort}\nstate_dir: state/{inst}\nidentity_dir: ids/{inst}\n"
        )
        institution_paths.append(path)
    federation = root / "fed.yaml"
    federation.write_text(
        "kind: federation\nfederation_id: tiny\nroster:\n" + "\n".join(roster) + "\n"
        "model: {source: 'random:tiny-bert', labels: [x, y], max_length_tokens: 12}\n"
        "adapter: {rank: 2}\n"
        f"rounds: {rounds}\n"
        "training: {steps_per_round: 2, expected_batch_size: 8, max_physical_batch_size: 8, learning_rate: 0.01}\n"
        f"min_institutions: {min_institutions}\n"
        "round_deadline_s: 60\n"
    )
    return federation, institution_paths


def load_files(federation: Path, institutions: list[Path]):
    return load_federation(federation), [load_institution(p) for p in institutions]


def publish_and_install(coordinator, members: dict, federation) -> None:
    """The key set-up as the drivers do it: the key holder publishes, every member installs its sealed copy."""
    bundle = members[federation.key_holder_id].make_keys()
    coordinator.publish_keys(federation.key_holder_id, bundle.key_id, bundle.layout_hash, bundle.public_context,
                             bundle.sealed, bundle.n_values, bundle.certificate.signature)
    for name, member in members.items():
        member.install_key(coordinator.sealed_key_for(name), coordinator.key_certificate())


def upload(coordinator, name: str, round_index: int, contribution, now: float = 1.0):
    """Upload a member's contribution as its driver would: envelope, ledger head, declared spend, statement."""
    from confide.formats import StatementClaims

    statement = contribution.statement
    return coordinator.upload(name, round_index, contribution.envelope, now=now, ledger_head=contribution.ledger_head,
                              declared=contribution.declared, signed=StatementClaims.of(statement),
                              shares=contribution.shares)


def reveal(coordinator, members: dict, round_index: int) -> None:
    """Every committee member reveals its share sum for the round's contributors, as its driver would."""
    for name in coordinator.state.committee:
        statements, shares = coordinator.unmask_request(round_index, name)
        coordinator.record_reveal(name, round_index, members[name].reveal(round_index, statements, shares))


def evidence(coordinator, round_index: int, member: str | None = None):
    """What a member's driver hands `apply_sum` with the round's sum: the statements and what the view says."""
    from confide.platform.sum_evidence import SumEvidence

    r = next(x for x in coordinator.state.rounds if x.index == round_index)
    return SumEvidence(tuple(coordinator.contributions(round_index)), r.sum_sha256, len(r.contributors),
                       member in r.left_out, tuple(coordinator.reveals(round_index)))


def install_directly(members: dict) -> None:
    """The key set-up without a coordinator: the key holder's bundle handed to every member as it is."""
    holder = next(m for m in members.values() if m.is_key_holder())
    bundle = holder.make_keys()
    for name, member in members.items():
        member.install_key(bundle.sealed[name], bundle.certificate)


def summed(public_context, contributions, members: dict) -> tuple:
    """The sum of `contributions` as an honest coordinator makes it, with the evidence its view would give:
    the statements, and the reveals of the committee `members` that do not refuse."""
    from confide.aggregation.envelope import sum_envelopes
    from confide.aggregation.secagg import unpack_bundle
    from confide.formats import sha256
    from confide.platform.secure_sum import RevealRefused
    from confide.platform.sum_evidence import SumEvidence

    total = sum_envelopes(public_context, [c.envelope for c in contributions])
    statements = [c.statement for c in contributions]
    reveals = []
    for seat, holder in enumerate(next(iter(members.values())).federation.committee):
        shares = {c.statement.institution: unpack_bundle(c.shares)[seat] for c in contributions}
        try:
            reveals.append(members[holder].reveal(statements[0].round, statements, shares))
        except RevealRefused:
            pass
    return total, SumEvidence(tuple(statements), sha256(total), len(contributions), reveals=tuple(reveals))


def drive(drivers: dict, hub, clock, idle) -> dict:
    """Run the drivers to the end as `confide simulate` does (threads; the simulated clock skips to the next
    deadline when everyone waits); return their reports."""
    from confide.platform.simulation import _drive

    class NoEvents:
        def drain(self, sink) -> None:
            pass

    _drive(drivers, hub, clock, idle, NoEvents(), None, lambda _event: None)
    return {name: driver.report for name, driver in drivers.items()}
