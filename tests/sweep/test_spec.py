"""SWEEP.yaml is validated like the policy files: every problem with its file, line and a hint."""

from __future__ import annotations

import math

import pytest

from confide.platform.sweep import load_sweep
from confide.policies import PolicyError
from tests.sweep.sweep_kit import write_tiny_sweep


def test_valid_sweep_loads_with_inf_meaning_no_dp(tmp_path):
    sweep = write_tiny_sweep(tmp_path, epsilons="[1, 3.5, inf, .inf]")
    loaded = load_sweep(sweep)
    assert loaded.spec.grid.epsilon[:2] == [1.0, 3.5]
    assert all(math.isinf(e) for e in loaded.spec.grid.epsilon[2:])
    assert loaded.spec.grid.lora_rank == [1, 2]
    assert loaded.federation.federation_id == "tiny"
    assert loaded.template.institution_id == "a"


def test_unknown_key_is_reported_with_line_and_suggestion(tmp_path):
    sweep = write_tiny_sweep(tmp_path)
    sweep.write_text(sweep.read_text().replace("  lora_rank:", "  lora_rnak:"))
    with pytest.raises(PolicyError) as info:
        load_sweep(sweep)
    line = next(i for i, text in enumerate(sweep.read_text().splitlines(), 1) if "lora_rnak" in text)
    assert str(info.value).startswith(f"{sweep}:{line}: grid.lora_rnak: unknown key")
    assert "did you mean `lora_rank`" in str(info.value)


def test_non_positive_epsilon_points_at_its_list_item(tmp_path):
    sweep = write_tiny_sweep(tmp_path, epsilons="\n    - 1\n    - 0\n")
    with pytest.raises(PolicyError) as info:
        load_sweep(sweep)
    line = next(i for i, text in enumerate(sweep.read_text().splitlines(), 1) if text.strip() == "- 0")
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (line, "grid.epsilon.1")
    assert "inf" in problem.message


def test_every_problem_is_reported_at_once(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("kind: sweep\nfederation: f.yaml\nsplit: {institutions: 0}\ngrid: {lora_rank: [4]}\nextra: 1\n")
    with pytest.raises(PolicyError) as info:
        load_sweep(sweep)
    fields = {p.field for p in info.value.problems}
    assert {"template", "split.institutions", "grid.epsilon", "extra"} <= fields


def test_missing_federation_file_names_that_file(tmp_path):
    sweep = write_tiny_sweep(tmp_path)
    (tmp_path / "base" / "fed.yaml").unlink()
    with pytest.raises(PolicyError) as info:
        load_sweep(sweep)
    assert "fed.yaml: file not found" in str(info.value)
