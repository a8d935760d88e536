"""Splitting one labelled dataset into a test set and non-IID institution shards (for experiments)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from confide.errors import BadInput
from confide.policies.common import ID_RULE, is_identifier


class SplitError(BadInput):
    """A split that cannot be made as asked."""


def parse_split(spec: str) -> float:
    """Parse `dirichlet:ALPHA` into ALPHA (> 0). Raises SplitError with the expected form."""
    kind, _, value = spec.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if kind != "dirichlet" or not 0 < alpha < math.inf:
        raise SplitError(f"--split {spec!r}: expected dirichlet:ALPHA with ALPHA > 0 (e.g. dirichlet:0.5)")
    return alpha


def check_split_settings(alpha: float, test_fraction: float, seed: int) -> None:
    """Refuse a Dirichlet alpha that is not a positive number, a test fraction outside (0, 1) or a negative seed."""
    if not 0 < alpha < math.inf:
        raise SplitError(f"Dirichlet alpha {alpha!r}: must be a number > 0 (e.g. 0.5)")
    if not 0 < test_fraction < 1:
        raise SplitError(f"--test-fraction {test_fraction!r}: must be between 0 and 1 (e.g. 0.2)")
    if seed < 0:
        raise SplitError(f"--seed {seed}: must be 0 or more")


def train_test_split(records: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Stratified split: the same fraction of each label goes to the test set. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({r["label"] for r in records}):
        group = [r for r in records if r["label"] == label]
        order = rng.permutation(len(group))
        n_test = int(round(test_fraction * len(group)))
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test


def dirichlet_split(
    records: list[dict], n_parts: int, alpha: float, seed: int, min_records: int = 20
) -> list[list[dict]]:
    """Split records into `n_parts` non-IID shards: each label's records are divided by Dirichlet(alpha).

    Small alpha gives skewed label mixes (alpha 0.1: nearly one class each; alpha 100: nearly IID).
    Draws again (up to 100 times) until every shard has at least `min_records`; raises SplitError if
    that is impossible.
    """
    if n_parts < 1:
        raise SplitError("the number of institutions must be at least 1")
    if n_parts * min_records > len(records):
        raise SplitError(f"{len(records)} records cannot give {n_parts} institutions {min_records} records each")
    rng = np.random.default_rng(seed)
    labels = sorted({r["label"] for r in records})
    for _ in range(100):
        shards: list[list[dict]] = [[] for _ in range(n_parts)]
        for label in labels:
            group = [r for r in records if r["label"] == label]
            order = rng.permutation(len(group))
            shares = rng.dirichlet([alpha] * n_parts)
            cuts = (np.cumsum(shares)[:-1] * len(group)).astype(int)
            for part, idx in enumerate(np.split(order, cuts)):
                shards[part] += [group[i] for i in idx]
        if min(len(s) for s in shards) >= min_records:
            return [[s[i] for i in rng.permutation(len(s))] for s in shards]
    raise SplitError(f"could not give every institution {min_records} records with alpha {alpha}; raise alpha")


def topic_split(records: list[dict], topics: dict[str, tuple[str, ...]]) -> dict[str, list[dict]]:
    """Give each institution (the keys of `topics`) the records whose label is one of its topics.

    The realistic non-IID case for a language model: each institution sees its own specialties, and
    a common test set covers them all. Raises SplitError if two institutions claim a topic (each
    record must stay at one institution) or an institution gets no record.
    """
    claimed = [label for labels in topics.values() for label in labels]
    twice = sorted({label for label in claimed if claimed.count(label) > 1})
    if twice:
        raise SplitError(f"topic {twice[0]!r} is given to two institutions", "give each topic to one institution")
    parts = {name: [r for r in records if r["label"] in labels] for name, labels in topics.items()}
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise SplitError(f"{empty[0]} gets no record: no label is one of {list(topics[empty[0]])}",
                         "name topics that occur among the records' labels")
    return parts


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write records as JSON Lines (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def split_to_files(
    records: list[dict], out_dir: Path, names: list[str], alpha: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """Hold out a stratified test set, split the rest non-IID across `names`, write `<name>.jsonl` and
    `test.jsonl` under `out_dir`. Returns {name: records} including "test"."""
    if len(set(names)) != len(names) or "test" in names:
        raise SplitError(f"institution names must be distinct and not 'test': {names}")
    bad = [name for name in names if not is_identifier(name)]
    if bad:
        raise SplitError(f"institution name {bad[0]!r} is not an id: it must be {ID_RULE}")
    check_split_settings(alpha, test_fraction, seed)
    train, test = train_test_split(records, test_fraction, seed)
    parts = dict(zip(names, dirichlet_split(train, len(names), alpha, seed)))
    parts["test"] = test
    for name, part in parts.items():
        write_jsonl(out_dir / f"{name}.jsonl", part)
    return parts


# The SmolLM2 example's hospitals share the same training articles differently: each holds only its
# specialties (1,781 articles: 742, 718 and 321), and the held-out set covers all five topics. What one
# hospital learns alone fits its own topics; the federation's average covers every topic.
SMOLLM2_TOPICS = {
    "smollm2-hospital-a": ("business", "politics"),
    "smollm2-hospital-b": ("sports", "entertainment"),
    "smollm2-hospital-c": ("tech",),
}


def write_specialties(parts: dict[str, list[dict]], data_dir: Path) -> dict[str, list[dict]]:
    """The SmolLM2 example's hospitals from the training articles of a split (`parts` by institution, a
    `test` part left out): each holds only its topics (`SMOLLM2_TOPICS`), one JSONL file each."""
    train = [record for name, part in parts.items() if name != "test" for record in part]
    specialties = topic_split(train, SMOLLM2_TOPICS)
    for name, part in specialties.items():
        write_jsonl(data_dir / f"{name}.jsonl", part)
    return specialties
