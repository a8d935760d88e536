"""Fixtures: `world` is a fresh copy of a small audited federation per test (see `support`)."""

from __future__ import annotations

import json
import shutil

import pytest

from confide.identity import Identity

from .support import (
    ROUNDS,
    SPEND,
    World,
    federation_yaml,
    institution_yaml,
    sign_receipts,
    write_ledger,
)


@pytest.fixture(scope="session")
def _prototype(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit-world")
    institution, other = Identity.generate("hospital-a"), Identity.generate("hospital-b")
    coordinator = Identity.generate("coordinator")
    ledger = write_ledger(root / "state", institution, [dict(SPEND, accountant="prv")] * ROUNDS)
    receipts = root / "receipts.json"
    receipts.write_text(json.dumps(sign_receipts(coordinator, "hospital-a", ROUNDS)))
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
    w.federation.write_text(federation_yaml(w.institution, w.other, 0.5, "prv", 1e-5))
    w.policy.write_text(institution_yaml(5.0, 2.5, 1.0))
    return w
