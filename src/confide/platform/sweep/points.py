"""The grid expanded into points, each with a stable key, and the policies each point runs with.

A point is plain data: its kind (`federated`, `alone`, `central`), the value of every axis, the
institution it concerns (alone baselines only) and a key. The key is a hash of all of that plus a
digest of the base policies and of the split data, so a re-run recognises finished points and an
edited base policy or dataset runs everything again.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from confide.formats import canonical_json, sha256
from confide.policies import FederationPolicy, InstitutionPolicy

AXES = ("epsilon", "clipping_norm", "lora_rank", "freeze_a", "local_steps", "expected_batch_size", "learning_rate",
        "rounds", "seed", "max_length_tokens")
"""Grid axes in the order columns and labels show them."""

KINDS = ("federated", "alone", "central")


@dataclass(frozen=True)
class Point:
    """One run of the sweep."""

    kind: str
    settings: dict
    """Every axis in AXES with its value (epsilon may be math.inf)."""
    institution: str | None = None
    """The institution an `alone` baseline trains; None otherwise."""
    key: str = field(default="", compare=False)

    @property
    def private(self) -> bool:
        return math.isfinite(self.settings["epsilon"])

    def label(self) -> str:
        """Short human description, e.g. `federated eps=3 lora_rank=8`."""
        parts = [self.kind + (f" {self.institution}" if self.institution else "")]
        parts += [f"{k}={plain(v)}" for k, v in self.settings.items()]
        return " ".join(parts)


def plain(value: object) -> object:
    """JSON-safe form of an axis value: infinity becomes the string `inf`."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def from_plain(axis: str, value: object) -> object:
    """Inverse of `plain` for one axis value read back from JSON."""
    if axis == "epsilon":
        return math.inf if value == "inf" else float(value)
    return value


def _digest(value: object) -> str:
    return sha256(canonical_json(value))


def base_settings(federation: FederationPolicy, template: InstitutionPolicy) -> dict:
    """The value every axis has in the base policies."""
    return {
        "epsilon": template.budget.epsilon,
        "clipping_norm": template.clipping_norm,
        "lora_rank": federation.adapter.rank,
        "freeze_a": federation.adapter.freeze_a,
        "local_steps": federation.training.steps_per_round,
        "expected_batch_size": federation.training.expected_batch_size,
        "learning_rate": federation.training.learning_rate,
        "rounds": federation.rounds,
        "seed": federation.seed,
        "max_length_tokens": federation.model.max_length_tokens,
    }


def context_digest(federation: FederationPolicy, template: InstitutionPolicy, split: dict, data_digest: str) -> str:
    """Digest of everything a point depends on besides its own settings."""
    institution = template.model_dump(mode="json", exclude={"state_dir", "identity_dir", "institution_id"})
    institution["data"].pop("path", None)
    return _digest({"federation": federation.model_dump(mode="json", exclude={"roster", "key_holder"}),
                    "template": institution, "split": split, "data": data_digest})


def _keyed(point: Point, context: str) -> Point:
    key = _digest({"kind": point.kind, "institution": point.institution, "context": context,
                   "settings": {k: plain(v) for k, v in point.settings.items()}})[:16]
    return Point(point.kind, point.settings, point.institution, key)


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def expand_grid(grid: dict, base: dict, institutions: list[str], alone: bool, central: bool,
                context: str) -> list[Point]:
    """Every point of the grid: federated, then the same combinations for each baseline.

    `grid` maps axes to lists of values (absent or None: the base value). The baselines run every
    combination the federation runs, so that the report can pick each kind's best setting by the
    same rule (a best-of-grid federation against first-value baselines would flatter federating).
    """
    values = {axis: _unique(grid.get(axis) or [base[axis]]) for axis in AXES}
    combos = [dict(zip(AXES, combo)) for combo in itertools.product(*values.values())]
    points = [Point("federated", settings) for settings in combos]
    for settings in combos:
        if alone:
            points += [Point("alone", settings, name) for name in institutions]
        if central:
            points.append(Point("central", settings))
    return [_keyed(p, context) for p in points]
