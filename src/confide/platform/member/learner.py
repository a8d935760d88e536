"""The member's local learning, behind one protocol: the only part of a member that touches a model.

`LocalModel` is the real one (torch, transformers, peft, Opacus): the federation's model with its
LoRA adapter and the institution's data, trained by DP-SGD. A member built with another `Learner`
(a test's fixed vectors) runs every other rule unchanged: keys, ledger, rounds, sums, files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from confide.aggregation.codec import AdapterLayout, flatten, unflatten
from confide.platform.member.account import DataFacts
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import RoundSpend

StepCallback = Callable[[int, int], None]
"""`on_step(step, steps)` after each optimizer step of a round."""


class Learner(Protocol):
    """What a member trains and evaluates: an adapter as a vector of `layout`, and the data it learns from."""

    layout: AdapterLayout
    initial: np.ndarray
    """The adapter before any round (the federation's seed decides it), flattened in `layout`."""
    data: DataFacts

    def load(self, adapter: np.ndarray) -> None:
        """Make `adapter` (flattened in `layout`) the model's current adapter."""

    def train(self, spend: RoundSpend, on_step: StepCallback) -> np.ndarray:
        """One DP-SGD round from the current adapter; returns its change, flattened. The current
        adapter is left as it was: the round's result travels only as the encrypted change."""

    def evaluate(self, records: list[dict] | None) -> dict:
        """Scores of the current adapter on `records` (None: the local held-out split)."""

    def save(self, out_dir: Path) -> None:
        """Save the current adapter in PEFT format under `out_dir`."""


class LocalModel:
    """The federation's model with its adapter, and the institution's data, loaded in this process."""

    def __init__(self, federation: FederationPolicy, policy: InstitutionPolicy) -> None:
        from confide.platform.data import load_institution_data
        from confide.platform.models import build_model
        from confide.privacy.trainable import trainable_state

        self.federation, self.policy = federation, policy
        self.model, self.tokenizer = build_model(federation)
        self.data = load_institution_data(policy, federation, self.tokenizer)
        self.initial, self.layout = flatten(trainable_state(self.model))

    def load(self, adapter: np.ndarray) -> None:
        from confide.privacy.trainable import load_trainable_state

        load_trainable_state(self.model, unflatten(adapter, self.layout))

    def train(self, spend: RoundSpend, on_step: StepCallback) -> np.ndarray:
        from confide.privacy.trainable import load_trainable_state, trainable_state
        from confide.privacy.training import train_round

        # Poisson sampling and the Gaussian noise draw from fresh OS randomness, never from a seed:
        # anyone who knew the seed could subtract the noise and undo the privacy.
        before = trainable_state(self.model)
        try:
            delta = train_round(self.model, self.data.train, self.federation, self.policy, spend, on_step=on_step)
        finally:
            # The local weights must not leak into the global adapter.
            load_trainable_state(self.model, before)
        return flatten(delta, self.layout)[0]

    def evaluate(self, records: list[dict] | None) -> dict:
        """Accuracy and mean loss; classifiers also get macro-F1, per-class accuracy and the confusion
        matrix (platform.evaluation)."""
        from confide.platform.evaluation import evaluate_classifier
        from confide.privacy.training import evaluate

        dataset = self.data.eval if records is None else self.data.encode(records)
        if self.federation.model.task == "sequence_classification":
            return evaluate_classifier(self.model, dataset, list(self.federation.model.labels))
        return evaluate(self.model, dataset)

    def save(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))
