"""`confide demo --example smollm2`: the causal-LM example's path end to end, on a tiny random Llama.

The real example (SmolLM2-135M, about 15 minutes) is `make demo-smollm2`, measured in docs/foundation-model.md;
the real model itself is tested in tests/privacy/test_smollm2_integration.py. Here the same policy
files, with the model swapped for `random:tiny-llama` and the schedule cut to one round, go through
the whole demo in this process: zero-shot score, federation, each alone.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from confide.cli import app
from confide.errors import BadInput
from confide.platform.corpus import BBC_LABELS
from confide.platform.demo import (
    EXAMPLES,
    SMOLLM2_TOPICS,
    default_examples_dir,
    demo_example,
    run_demo,
    write_demo_data,
)
from confide.platform.display import causal_demo_table


def _tiny_examples(tmp_path: Path) -> Path:
    """The smollm2 example's files on a tiny random Llama, one short round, the demo's split of synthetic articles."""
    examples = tmp_path / "examples"
    examples.mkdir()
    chosen = EXAMPLES["smollm2"]
    for name in (chosen.federation_file, *chosen.institution_files):
        shutil.copy(default_examples_dir() / name, examples / name)
    federation = yaml.safe_load((examples / chosen.federation_file).read_text())
    federation["model"]["source"] = "random:tiny-llama"
    federation["model"]["max_length_tokens"] = 16
    federation["adapter"]["layers"] = [1]
    federation["rounds"] = 1
    federation["training"].update(steps_per_round=1, expected_batch_size=4, max_physical_batch_size=4)
    (examples / chosen.federation_file).write_text(yaml.safe_dump(federation))
    for name in chosen.institution_files:
        policy = yaml.safe_load((examples / name).read_text())
        policy["accepts"]["base_models"] = ["random:tiny-llama"]
        (examples / name).write_text(yaml.safe_dump(policy))
    words = ["market", "shares", "film", "award", "vote", "minister", "match", "goal", "phone", "chip"]
    records = [{"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(6 + i % 5)),
                "label": BBC_LABELS[i % len(BBC_LABELS)]} for i in range(150)]
    write_demo_data(records, examples / "data")
    return examples


def test_causal_example_scores_the_base_each_institution_alone_and_the_federation(tmp_path):
    examples = _tiny_examples(tmp_path)
    result = run_demo(tmp_path / "out", examples, workers=0, example="smollm2")
    test_size = len((examples / "data" / "test.jsonl").read_text().splitlines())
    assert result.zero_shot["examples"] == len(range(0, test_size, EXAMPLES["smollm2"].test_stride))
    assert math.isclose(result.zero_shot["perplexity"], math.exp(result.zero_shot["loss"]))
    assert sorted(result.local) == ["hospital-a", "hospital-b", "hospital-c"]
    assert [r["status"] for r in result.federated["rounds"]] == ["summed"]
    saved = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert saved["example"] == "smollm2" and saved["zero_shot"]["perplexity"] == result.zero_shot["perplexity"]
    assert (tmp_path / "out" / "perplexity.png").stat().st_size > 0
    rows = [[cell for cell in column._cells] for column in causal_demo_table(result).columns]
    assert rows[0] == ["zero-shot base", "hospital-a alone", "hospital-b alone", "hospital-c alone", "federated"]
    assert all(cell != "-" for cell in rows[1])  # every perplexity is there


def test_an_unknown_example_is_one_line_naming_the_ones_there_are_and_exit_2(tmp_path):
    with pytest.raises(BadInput, match="bbc, smollm2"):
        demo_example("gpt5")
    result = CliRunner().invoke(app, ["demo", "--example", "gpt5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "use one of bbc, smollm2" in result.output
    assert not (tmp_path / "out").exists()


def test_each_smollm2_hospital_holds_only_its_specialties_and_the_held_out_set_every_topic(tmp_path):
    records = [{"text": f"article {i}", "label": BBC_LABELS[i % len(BBC_LABELS)]} for i in range(150)]
    write_demo_data(records, tmp_path)
    read = lambda name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]  # noqa: E731
    held_by = {name: {r["label"] for r in read(name)} for name in SMOLLM2_TOPICS}
    assert held_by == {name: set(topics) for name, topics in SMOLLM2_TOPICS.items()}
    trained_on = sorted(r["text"] for name in SMOLLM2_TOPICS for r in read(name))
    assert trained_on == sorted(r["text"] for name in ["hospital-a", "hospital-b", "hospital-c"] for r in read(name))
    scored = read("test")[:: EXAMPLES["smollm2"].test_stride]
    assert {r["label"] for r in scored} == set(BBC_LABELS)
    assert not {r["text"] for r in scored} & set(trained_on)
