"""Fixtures: `world` is a fresh copy of a small audited federation per test (see `support`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from confide.identity import Identity
from confide.policies import load_federation, load_institution

from .support import (
    ROUNDS,
    SPEND,
    World,
    federation_yaml,
    institution_yaml,
    sign_receipts,
    write_ledger,
    write_records,
)


@pytest.fixture(scope="session")
def _prototype(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit-world")
    institution, other = Identity.generate("hospital-a"), Identity.generate("hospital-b")
    coordinator = Identity.generate("coordinator")
    ledger = write_ledger(root / "state", institution, [dict(SPEND, accountant="pld")] * ROUNDS,
                          coordinator=coordinator)
    receipts = root / "receipts.json"
    receipts.write_text(json.dumps(sign_receipts(coordinator, "hospital-a", ROUNDS, ledger=ledger)))
    return dict(root=root, institution=institution, other=other, coordinator=coordinator, ledger=ledger,
                receipts=receipts)


@pytest.fixture
def world(_prototype, tmp_path) -> World:
    ledger = tmp_path / "hospital-a.ds-1.jsonl"
    shutil.copy(_prototype["ledger"], ledger)
    receipts = tmp_path / "receipts.json"
    shutil.copy(_prototype["receipts"], receipts)
    w = World(root=tmp_path, institution=_prototype["institution"], other=_prototype["other"],
              coordinator=_prototype["coordinator"], ledger=ledger, federation=tmp_path / "federation.yaml",
              policy=tmp_path / "policy.yaml", receipts=receipts)
    w.federation.write_text(federation_yaml(w.institution, w.other, 0.5, "pld", 1e-5))
    w.policy.write_text(institution_yaml(5.0, 2.5, 1.0))
    return w


@pytest.fixture(scope="module")
def tiny_policies(tmp_path_factory):
    """A federation on random:tiny-bert (FFA-LoRA r=8 on query/value, SGD) and one institution with 64 records."""
    tmp = tmp_path_factory.mktemp("canary")
    write_records(tmp / "a.jsonl", 64)
    a, b = Identity.generate("hospital-a"), Identity.generate("hospital-b")
    training = ("training:\n  steps_per_round: 10\n  expected_batch_size: 32\n  max_physical_batch_size: 64\n"
                "  learning_rate: 0.05\n  optimizer: sgd\n")
    federation = load_federation(_write(tmp / "federation.yaml", federation_yaml(a, b, 0.5, "pld", 1e-5, training) + (
        "adapter:\n  rank: 8\n  alpha: 16\n  target_modules: [query, value]\n")))
    institution = load_institution(_write(tmp / "policy.yaml", institution_yaml(8.0, None, 1.0).replace(
        "data:\n  path: data.jsonl\n  format: jsonl\n",
        "data:\n  path: a.jsonl\n  format: jsonl\n  eval_fraction: 0\n")))
    return federation, institution


@pytest.fixture(scope="module")
def tiny_classifier(tiny_policies):
    """The federation's model (platform code builds it; the audit only receives it) and the training set."""
    from confide.platform.data import load_institution_data
    from confide.platform.models import build_adapter_model

    torch.set_num_threads(1)
    federation, institution = tiny_policies
    built = build_adapter_model(federation, device=torch.device("cpu"))
    data = load_institution_data(institution.data, federation.model, built.tokenizer)
    return built, data.train


def _write(path, text):
    path.write_text(text)
    return path
