"""The real bundled MiniLM with BBC News articles: one short DP round end to end (integration)."""

from __future__ import annotations

import json

import pytest

from confide.platform.data import load_institution_data
from confide.platform.models import build_adapter_model
from confide.privacy import RoundSpend
from confide.privacy.trainable import parameters_digest, trainable_state
from confide.privacy.training import evaluate, train_round

from .helpers import BBC_LABELS, bbc_articles, make_federation, make_institution

pytestmark = pytest.mark.integration


def test_minilm_dp_round_on_bbc_moves_only_the_adapter_and_starts_identical(tmp_path):
    articles = bbc_articles(per_class=6)  # the demo extra, which `make install` installs
    assert len(articles) == 6 * len(BBC_LABELS)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(a) for a in articles) + "\n")
    federation = make_federation(
        model={"source": "bundled:minilm-l6", "labels": BBC_LABELS, "max_length_tokens": 32},
        training={"steps_per_round": 2, "expected_batch_size": 6, "max_physical_batch_size": 4},
    )
    built = build_adapter_model(federation)
    twin = build_adapter_model(federation)
    assert parameters_digest(built.model, True) == parameters_digest(twin.model, True)
    assert built.frozen_digest() == twin.frozen_digest()
    assert "trainable" in built.describe()

    data = load_institution_data(make_institution(tmp_path), federation, built.tokenizer)
    frozen = built.frozen_digest()
    before = trainable_state(built.model)
    delta = train_round(built.model, data.train, federation, make_institution(tmp_path),
                        RoundSpend(1.0, 6 / data.train_size, 2))
    assert built.frozen_digest() == frozen
    assert all(delta[name].abs().sum() > 0 for name in before)
    result = evaluate(built.model, data.eval)
    assert result["examples"] == len(data.eval) and 0.0 <= result["accuracy"] <= 1.0
