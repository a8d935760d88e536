"""Shared pieces of the network tests: a federation on disk, signed in-process requests, state snapshots."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from confide.aggregation import _seal
from confide.aggregation.envelope import encrypt_update
from confide.aggregation.errors import AggregationError
from confide.aggregation.integrity import tags_for
from confide.aggregation.keys import create_key_material, seal_secret
from confide.aggregation.params import CkksParameters
from confide.aggregation.wire import read_header, read_seeds
from confide.formats import ContributionStatement, DeclaredSpend, KeyCertificate, policy_sha256, sha256
from confide.identity import Identity, roster_identities
from confide.platform.hub import CoordinatorHub
from confide.platform.secure_sum import Reveals, mask_upload, share_digests
from confide.platform.service.app import create_app
from confide.platform.service.client import spend_query
from confide.platform.service.signing import sign_request
from confide.policies import load_federation

IDS = ("a", "b", "c")
LAYOUT = hashlib.sha256(b"test layout").hexdigest()
SMALL_CKKS = {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [60, 40], "scale_bits": 40}


def federation_text(identities: dict[str, Identity], rounds: int = 2, min_institutions: int = 2,
                    deadline_s: float = 60, model: str = "random:tiny-bert", extra: str = "") -> str:
    lines = ["kind: federation", "federation_id: net-test", "roster:"]
    for i, ident in identities.items():
        entry = ident.public.to_roster_entry(i)
        lines += [f"  - id: {i}", f"    signing_key: {entry['signing_key']}",
                  f"    sealing_key: {entry['sealing_key']}"]
    lines += [
        "model:", f"  source: {model}", "  labels: [x, y]", "  max_length_tokens: 16",
        "adapter:", "  rank: 2", f"rounds: {rounds}", f"min_institutions: {min_institutions}",
        f"round_deadline_s: {deadline_s}",
        "ckks:", f"  poly_modulus_degree: {SMALL_CKKS['poly_modulus_degree']}",
        f"  coeff_mod_bit_sizes: {SMALL_CKKS['coeff_mod_bit_sizes']}", f"  scale_bits: {SMALL_CKKS['scale_bits']}",
    ]
    return "\n".join(lines) + "\n" + extra


@dataclass
class Federation:
    path: Path
    identities: dict[str, Identity]

    @property
    def policy(self):
        return load_federation(self.path)


def make_federation(root: Path, ids=IDS, **options) -> Federation:
    identities = {}
    for i in ids:
        ident = Identity.generate(i)
        ident.save(root / "identities" / i)
        identities[i] = ident
    path = root / "federation.yaml"
    path.write_text(federation_text(identities, **options))
    return Federation(path, identities)


@pytest.fixture
def federation(tmp_path) -> Federation:
    return make_federation(tmp_path)


def declared_spend(policy) -> DeclaredSpend:
    """A round's DP-SGD spend that keeps to `policy` (a FederationPolicy), as a member declares it."""
    privacy = policy.privacy
    return DeclaredSpend(max(1.0, privacy.min_noise_multiplier), 0.1, policy.training.steps_per_round, 1.0,
                         privacy.delta, privacy.accountant, hashlib.sha256(b"spend entry").hexdigest())


LEDGER_HEAD = "ab" * 32
"""A stand-in ledger head `(seq, hash)` for uploads made without a real member's ledger."""


def spend_params(policy) -> dict:
    """`declared_spend(policy)` and `LEDGER_HEAD` as the upload's query parameters (what CoordinatorClient.upload
    sends)."""
    return {"ledger_head": LEDGER_HEAD, **spend_query(declared_spend(policy))}


class Keys:
    """The key holder's side of key set-up, made directly with confide.aggregation and certified by `holder`."""

    def __init__(self, federation: "Federation", holder: str = "a", n_values: int | None = None) -> None:
        identities = federation.identities
        self.secret = create_key_material(CkksParameters(**SMALL_CKKS))
        raw = self.secret.to_bytes()
        self.sealed = {i: seal_secret(raw, ident.public.sealing_public, i, self.secret.key_id)
                       for i, ident in identities.items()}
        self.n_values = n_values
        self.certificate = identities[holder].sign_document(KeyCertificate(
            federation="net-test", federation_sha256=policy_sha256(federation.policy), key_holder=holder,
            key_id=self.secret.key_id,
            params=self.secret.params.model_dump(mode="json"),
            public_context_sha256=sha256(self.secret.public_context_bytes()), layout_hash=LAYOUT, n_values=n_values,
            sealed_sha256={i: sha256(b) for i, b in sorted(self.sealed.items())}))

    def request(self, **changes) -> dict:
        body = {"version": 1, "key_id": self.secret.key_id, "layout_hash": LAYOUT, "n_values": self.n_values,
                "public_context": base64.b64encode(self.secret.public_context_bytes()).decode(),
                "sealed": {i: base64.b64encode(b).decode() for i, b in self.sealed.items()},
                "certificate_signature": self.certificate.signature}
        body.update(changes)
        return body

    def envelope(self, values, weight: float = 1.0, layout: str = LAYOUT) -> bytes:
        return encrypt_update(self.secret, np.asarray(values, dtype=np.float64), weight, layout)


@functools.cache
def small_ckks_tags() -> int:
    """How many integrity tags an upload carries under SMALL_CKKS (from its prime's size)."""
    return tags_for(_seal.last_modulus(_seal.build_context(CkksParameters(**SMALL_CKKS))))


def mask_shares(policy, envelope: bytes, round_index: int = 1, institution: str = "a") -> bytes:
    """Mask shares sealed to the committee, as a member sends them with an upload (the envelope itself was
    made without the mask: these tests look at what the coordinator checks, not at decryption)."""
    return mask_upload(policy, roster_identities(policy.roster), read_header(envelope).key_id, round_index,
                       institution)[1]


def contribution_statement(identity: Identity, envelope: bytes, round_index: int = 1, institution: str | None = None,
                           federation_id: str = "net-test", shares: dict[str, str] | None = None
                           ) -> ContributionStatement:
    """The upload's contribution statement, signed by `identity` (its tags are placeholders: the coordinator
    cannot compute or check them, members do). `shares`: the digests of its mask shares."""
    header = read_header(envelope)
    return identity.sign_document(ContributionStatement(
        federation=federation_id, round=round_index, institution=institution or identity.institution_id,
        key_id=header.key_id, envelope_sha256=sha256(envelope), seed=read_seeds(envelope, header)[0].hex(),
        tags=("1",) * small_ckks_tags(), shares=shares or {}))


def upload_request(policy, identity: Identity, envelope: bytes, round_index: int = 1,
                   institution: str | None = None, federation_id: str = "net-test") -> tuple[dict, bytes]:
    """The query parameters (spend, statement) and body (envelope, then mask shares) of an upload."""
    who = institution or identity.institution_id
    shares = mask_shares(policy, envelope, round_index, who)
    statement = contribution_statement(identity, envelope, round_index, institution, federation_id,
                                       share_digests(policy, shares))
    params = {**spend_params(policy), "tags": ",".join(statement.tags), "statement_signature": statement.signature,
              "shares_bytes": len(shares)}
    return params, envelope + shares


class SignedClient:
    """Requests to an in-process app, signed as one of the federation's institutions."""

    def __init__(self, client: TestClient, federation_id: str = "net-test", policy=None) -> None:
        self.client = client
        self.federation_id = federation_id
        self.policy = policy
        """The federation file the app serves: what `upload` declares a spend against."""

    def request(self, identity: Identity | None, method: str, path: str, content: bytes = b"",
                headers: dict | None = None, json_body=None, params: dict | None = None):
        if json_body is not None:
            content = json.dumps(json_body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        request = self.client.build_request(method, path, content=content, headers=headers, params=params)
        if identity is not None:
            target = request.url.raw_path.decode()
            request.headers.update(sign_request(identity, self.federation_id, method, target, content))
        return self.client.send(request)

    def upload(self, identity: Identity, envelope: bytes, round_index: int = 1, institution: str | None = None):
        """PUT an envelope as `identity` (for `institution`, default itself), declaring a spend that keeps to
        the federation file, as `CoordinatorClient.upload` does."""
        path = f"/v1/rounds/{round_index}/uploads/{institution or identity.institution_id}"
        params, body = spend_params(self.policy), envelope
        try:
            if identity is not None:
                params, body = upload_request(self.policy, identity, envelope, round_index, institution,
                                              self.federation_id)
        except AggregationError:  # not an envelope: no statement, the coordinator refuses the bytes for what they are
            pass
        return self.request(identity, "PUT", path, content=body,
                            headers={"content-type": "application/octet-stream"}, params=params)

    def reveal_round(self, identities: dict[str, Identity], round_index: int, directory: Path) -> None:
        """Every committee member fetches its shares of the round's uploads and reveals its share sum."""
        for holder in self.policy.committee:
            body = self.request(identities[holder], "GET", f"/v1/rounds/{round_index}/unmask/{holder}").json()
            statements = [ContributionStatement.model_validate(s) for s in body["statements"]]
            shares = {who: base64.b64decode(blob) for who, blob in body["shares"].items()}
            reveal = Reveals(directory / holder, self.policy, roster_identities(self.policy.roster),
                             identities[holder]).reveal(round_index, statements[0].key_id, statements, shares)
            reply = self.request(identities[holder], "POST", f"/v1/rounds/{round_index}/reveals/{holder}",
                                 content=reveal.model_dump_json().encode(),
                                 headers={"content-type": "application/json"})
            assert reply.status_code == 200, reply.text


def snapshot(hub: CoordinatorHub) -> tuple:
    """Everything a refused request must leave unchanged: state, events, receipts and blobs."""
    events = hub.coordinator.store.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    blobs = sorted((p.name, p.stat().st_size) for p in hub.coordinator.blobs.glob("*")) \
        if hub.coordinator.blobs.exists() else []
    return json.dumps(hub.state.to_dict(), sort_keys=True), events, hub.coordinator.store.receipts(), blobs


@pytest.fixture
def served(tmp_path, federation):
    """A hub over a fresh state directory and a signed in-process client of its app (ticking fast)."""
    hub = CoordinatorHub(federation.policy, tmp_path / "coordinator", max_upload_bytes=2_000_000)
    with TestClient(create_app(hub, tick_s=0.05)) as client:
        yield hub, SignedClient(client, policy=federation.policy), federation
    hub.close()
