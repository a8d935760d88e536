"""Model sources: local directories load without the network; bad sources are one-line errors."""

from __future__ import annotations

import pytest

from confide.platform.models import (
    ModelLoadError,
    build_adapter_model,
    build_model,
    load_base_model,
    load_tokenizer,
)
from confide.privacy import parameters_digest, trainable_state

from .helpers import make_federation


def test_local_hugging_face_directory_loads_and_seeds_the_new_head(tmp_path):
    settings = make_federation().model
    tokenizer = load_tokenizer(settings)
    load_base_model(settings, tokenizer, seed=3).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    federation = make_federation(model={"source": str(tmp_path / "base")})
    first, tokenizer = build_model(federation)
    second, _ = build_model(federation)
    assert parameters_digest(first, True) == parameters_digest(second, True)
    assert parameters_digest(first, False) == parameters_digest(second, False)
    assert any("modules_to_save" in name for name in trainable_state(first))
    assert tokenizer("a test")["input_ids"]


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"source": "/no/such/model"}}, "no Hugging Face model directory"),
    ({"model": {"source": "random:tiny-llama"}}, "unknown model.source"),
    ({"model": {"source": "hub:bert-base"}}, "not a known source"),
    ({"adapter": {"target_modules": ["c_attn"]}}, "do not fit"),
    ({"model": {"source": "random:tiny-bert", "task": "causal_lm", "labels": []}}, "sequence_classification only"),
])
def test_bad_model_sources_and_settings_are_errors_with_a_hint(overrides, message):
    with pytest.raises(ModelLoadError, match=message):
        build_adapter_model(make_federation(**overrides))
