"""Test support: a small federation with real identities and policy files, ledgers written by the real
ledger code, the coordinator's signed receipts, and helpers that tamper with ledgers as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from confide.formats import DeclaredSpend, Receipt
from confide.identity import Identity, b64
from confide.privacy.ledger import PrivacyLedger, entry_hash, signed_message

FEDERATION_ID = "fed-1"
ROUNDS = 3
ENTRIES_PER_ROUND = 3
SPEND_SEQS = [1 + ENTRIES_PER_ROUND * i for i in range(ROUNDS)]
"""The seq of each round's spend entry in the prototype ledger: 1, 4, 7."""
SPEND = dict(noise_multiplier=1.0, sample_rate=0.05, steps=20, clipping_norm=1.0, delta=1e-5)


@dataclass(frozen=True)
class World:
    """Everything an audit test needs. `ledger` is a fresh copy per test: tamper with it freely."""

    root: Path
    institution: Identity
    other: Identity
    coordinator: Identity
    ledger: Path
    federation: Path
    policy: Path
    receipts: Path

    def policy_file(self, budget: float = 5.0, cap: float | None = 2.5, clipping: float = 1.0) -> Path:
        path = self.root / f"policy-{budget}-{cap}-{clipping}.yaml"
        path.write_text(institution_yaml(budget, cap, clipping))
        return path

    def federation_file(self, min_noise: float = 0.5, accountant: str = "pld", delta: float = 1e-5) -> Path:
        path = self.root / f"federation-{min_noise}-{accountant}-{delta}.yaml"
        path.write_text(federation_yaml(self.institution, self.other, min_noise, accountant, delta))
        return path

    @property
    def key(self) -> str:
        return b64(self.institution.public.signing_public)

    @property
    def coordinator_key(self) -> str:
        return b64(self.coordinator.public.signing_public)


def federation_yaml(a: Identity, b: Identity, min_noise: float, accountant: str, delta: float,
                    training: str | None = None, federation: str = FEDERATION_ID) -> str:
    """The test federation; `training` replaces its training section (default: the steps SPEND takes)."""
    roster = ""
    for ident in (a, b):
        entry = ident.public.to_roster_entry(ident.institution_id)
        roster += (f"  - id: {entry['id']}\n    signing_key: {entry['signing_key']}\n"
                   f"    sealing_key: {entry['sealing_key']}\n")
    return (f"kind: federation\nfederation_id: {federation}\nroster:\n{roster}"
            "model:\n  source: random:tiny-bert\n  labels: [x, y]\nrounds: 5\nmin_institutions: 2\n"
            + (training if training is not None else f"training:\n  steps_per_round: {SPEND['steps']}\n") +
            f"privacy:\n  delta: {delta}\n  accountant: {accountant}\n  min_noise_multiplier: {min_noise}\n")


def institution_yaml(budget: float, cap: float | None, clipping: float) -> str:
    cap_line = f"round_epsilon_cap: {cap}\n" if cap is not None else ""
    return ("kind: institution\ninstitution_id: hospital-a\n"
            "data:\n  path: data.jsonl\n  format: jsonl\n"
            f"budget:\n  epsilon: {budget}\n  delta: 1.0e-5\n{cap_line}clipping_norm: {clipping}\n"
            "state_dir: state\n")


def write_records(path: Path, count: int) -> Path:
    """`count` short records of two classes whose words give the label away."""
    words = {"x": ["match", "goal", "team", "league", "coach"], "y": ["chip", "phone", "network", "robot", "data"]}
    lines = []
    for i in range(count):
        label = "xy"[i % 2]
        text = " ".join(words[label][(i * 7 + k * 3) % 5] for k in range(5)) + f" item {i}"
        lines.append(json.dumps({"text": text, "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


def stepping_clock(start: datetime = datetime(2025, 1, 1, tzinfo=timezone.utc)):
    """A clock that advances one minute per call: ledgers are deterministic and time strictly grows."""
    now = [start]

    def clock() -> datetime:
        now[0] += timedelta(minutes=1)
        return now[0]

    return clock


def envelope_hash(round_index: int) -> str:
    """A stand-in SHA-256 of the envelope uploaded in a round."""
    return f"{round_index:064x}"


def sum_hash(round_index: int, federation: str = FEDERATION_ID) -> str:
    """A stand-in SHA-256 of the encrypted sum the coordinator handed out for a round."""
    return hashlib.sha256(f"sum/{federation}/{round_index}".encode()).hexdigest()


def write_ledger(state: Path, identity: Identity, spends: list[dict], dataset: str = "ds-1",
                 coordinator: Identity | None = None, federation: str = FEDERATION_ID,
                 applied: bool = False) -> Path:
    """A ledger written by `PrivacyLedger` itself, per round as a member writes it: the spend, the
    upload's outcome and, given the coordinator, the receipt it kept (3 entries a round); with
    `applied`, also the sum it applied (`sum_hash`). Appends to a ledger already in `state`."""
    ledger = PrivacyLedger.open(state, identity.institution_id, dataset, identity, clock=stepping_clock())
    for round_index, spend in enumerate(spends, start=1):
        ledger.append("spend", federation, round_index, **spend)
        ledger.append("outcome", federation, round_index, result="uploaded",
                      envelope_sha256=envelope_hash(round_index), weight=64.0)
        if coordinator is not None:
            receipt = sign_receipts(coordinator, identity.institution_id, round_index, federation,
                                    ledger.entries())[-1]
            ledger.append("receipt", federation, round_index, receipt=receipt)
        if applied:
            ledger.append("applied", federation, round_index, count=2, sum_sha256=sum_hash(round_index, federation))
    return ledger.path


def sign_receipts(coordinator: Identity, institution: str, rounds: int, federation: str = FEDERATION_ID,
                  ledger: Path | list[dict] | None = None) -> list[dict]:
    """The coordinator's receipts for rounds 1..`rounds`, as `confide.platform.coordinator` signs them:
    each names the institution's ledger head at upload (the round's `outcome` entry) and the round's
    declared spend, read from `ledger` (a path or its entries); rounds it lacks (or without a ledger)
    get a head and a spend that no ledger has."""
    entries = read_entries(ledger) if isinstance(ledger, Path) else list(ledger or [])
    receipts = []
    for r in range(1, rounds + 1):
        mine = [e for e in entries if e.get("federation") == federation and e.get("round") == r]
        outcome = next((e for e in mine if e["kind"] == "outcome"), {"hash": "ee" * 32})
        spend = next((e for e in mine if e["kind"] == "spend"), None)
        declared = (DeclaredSpend.of_entry(spend) if spend is not None
                    else DeclaredSpend.from_dict({**SPEND, "accountant": "pld", "entry_hash": "ee" * 32}))
        body = Receipt(federation, r, institution, envelope_hash(r), outcome["hash"], declared)
        receipts.append({**body.to_dict(), "signature": b64(coordinator.sign(body.message()))})
    return receipts


# ----------------------------------------------------------------------------- tampering


def read_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_entries(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def reseal(entries: list[dict], identity: Identity) -> list[dict]:
    """Recompute every hash, prev_hash and signature: what an institution rewriting its own ledger does."""
    prev = "0" * 64
    out = []
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k not in ("hash", "signature")} | {"prev_hash": prev}
        entry["hash"] = entry_hash(entry)
        entry["signature"] = base64.b64encode(identity.sign(signed_message(entry["hash"]))).decode()
        prev = entry["hash"]
        out.append(entry)
    return out


def altered(value):
    """A different value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    if isinstance(value, list):
        return value + ["x"]
    return {"x": 1}
