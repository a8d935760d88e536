"""Real `Member`s without a model: a `Learner` over a small vector, and the member built over it.

The member is the product's (keys, ledger, budget, masks, reveals, integrity tags, update bound,
min_cohort, receipts, files); only the learning is replaced. The k-th training of the member at
roster position i returns `STEP * (i + 1) * k` in every value, so tests can predict the averages,
and appends a line to `trainings.log` under the member's state directory, so tests can count
trainings across restarts. `STEP` keeps every update far inside the bound an honest AdamW round
can move a parameter (`update_bound`: about lr * steps, 0.8 per value under the default training)
and far above the CKKS noise of a small sum (about 1e-4; assert with `NOISE`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confide.aggregation.codec import AdapterLayout, LayoutEntry
from confide.platform.member import Member
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.guarantee import WEIGHTS_FILE

SIZE = 16
STEP = 0.01
"""The update of a member's first training, per roster position (a: 1 x STEP, b: 2 x STEP, ...)."""
NOISE = 5e-4
"""What two decryptions of the same arithmetic may differ by (CKKS noise of SMALL_CKKS sums of a few uploads)."""
TRAIN_RECORDS = 1000


@dataclass(frozen=True)
class VectorData:
    """The data facts a member's privacy account needs: a made-up dataset of `records` distinct records."""

    fingerprint: str
    records: int
    train_size: int
    record_digests: tuple[bytes, ...]

    @classmethod
    def of(cls, institution: str, records: int = TRAIN_RECORDS) -> "VectorData":
        digests = tuple(sorted(hashlib.sha256(f"{institution}/{i}".encode()).digest() for i in range(records)))
        return cls(hashlib.sha256(b"".join(digests)).hexdigest(), records, records, digests)


class VectorLearner:
    """A `Learner` whose adapter is a vector of `SIZE` values and whose training is a fixed rule."""

    def __init__(self, position: int, log: Path, data: VectorData) -> None:
        self.position, self.log, self.data = position, Path(log), data
        self.layout = AdapterLayout((LayoutEntry("vector", (SIZE,), "float32"),))
        self.initial = np.zeros(SIZE)
        self.current = self.initial.copy()

    @property
    def trainings(self) -> list[str]:
        """One line per training ever done in this state directory: its ordinal (1, 2, ...)."""
        return self.log.read_text().split() if self.log.exists() else []

    def load(self, adapter: np.ndarray) -> None:
        self.current = np.asarray(adapter, dtype=np.float64).copy()

    def train(self, spend: RoundSpend, on_step) -> np.ndarray:
        k = len(self.trainings) + 1
        with self.log.open("a") as log:
            log.write(f"{k}\n")
        for step in range(1, spend.steps + 1):
            on_step(step, spend.steps)
        return np.full(SIZE, STEP * (self.position + 1) * k)

    def evaluate(self, records: list[dict] | None) -> dict:
        """The mean of the current adapter and how many records it was asked about."""
        return {"mean": float(self.current.mean()), "records": len(records) if records is not None else 0}

    def save(self, out_dir: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"vector": self.current.astype(np.float32)}, str(Path(out_dir) / WEIGHTS_FILE))


def institution_policy(federation: FederationPolicy, who: str, identity_dir: Path, state_dir: Path,
                       epsilon: float = 20.0, **fields) -> InstitutionPolicy:
    """The institution policy of member `who`: its identity, its state directory, a budget that allows
    every round of the federation. `data.path` names no file: the learner is the data, nothing reads it."""
    return InstitutionPolicy.model_validate({
        "kind": "institution", "institution_id": who,
        "data": {"path": str(state_dir / "no-data.jsonl"), "format": "jsonl"},
        "budget": {"epsilon": epsilon, "delta": federation.privacy.delta},
        "state_dir": str(state_dir), "identity_dir": str(identity_dir), **fields})


def vector_member(federation: FederationPolicy, who: str, identity_dir: Path, state_dir: Path,
                  member_class: type[Member] = Member, **policy_fields) -> Member:
    """A real `member_class` for `who` over a `VectorLearner`, everything under `state_dir` (its ledger
    registry too, so two runs with the same identities keep apart)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    policy = institution_policy(federation, who, identity_dir, state_dir, **policy_fields)
    position = [m.id for m in federation.roster].index(who)
    learner = VectorLearner(position, state_dir / "trainings.log", VectorData.of(who))
    return member_class(federation, policy, registry_dir=state_dir / "registry", learner=learner)
